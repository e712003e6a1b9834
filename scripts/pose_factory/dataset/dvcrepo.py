"""The git + DVC side: run real `git` and `dvc` commands on the project, configure the DVC remote,
track batches and keep `params.yaml` in step with what is in the mirror.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pose_factory.core.errors import RepositoryError, ToolError
from pose_factory.core.settings import R2Credentials, Settings, redact

R2_REMOTE = "r2"
LOCAL_REMOTE = "local"


def cache_type(root: Path) -> str:
    """DVC's link type for this filesystem: one copy of each file on disk, read-only in the mirror.

    Copy-on-write clones (APFS, btrfs, XFS) where the filesystem has them, else hardlinks, which DVC makes
    read-only. DVC links a file into its cache on `dvc add` only with the first type listed, so the list
    starts with the one that works here (with "reflink,hardlink" on ext4, add copies every file).
    """
    from pose_factory.core.fsutil import clone_file

    probe_dir = root / ".dvc" / "tmp"
    probe_dir.mkdir(parents=True, exist_ok=True)
    source, dest = probe_dir / "clone-probe", probe_dir / "clone-probe.copy"
    try:
        source.write_bytes(b"probe")
        return "reflink,copy" if clone_file(source, dest) else "hardlink,copy"
    finally:
        source.unlink(missing_ok=True)
        dest.unlink(missing_ok=True)


def _run(command: list[str], root: Path, what: str, *, env: dict[str, str] | None = None,
         stdin: str | None = None) -> str:
    full_env = {**os.environ, "DVC_NO_ANALYTICS": "1", **(env or {})}
    try:
        done = subprocess.run(command, cwd=root, capture_output=True, text=True, env=full_env, input=stdin)
    except FileNotFoundError:
        raise ToolError(f"cannot run {command[0]}", where=what, hint="install it (make setup installs dvc)") from None
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-6:])
        raise ToolError(f"{what} failed:\n{redact(tail)}", where=str(root),
                        hint="run the same command by hand to see the whole output")
    return done.stdout


def dvc(root: Path, *args: str) -> str:
    """Run `dvc ARGS` (the virtualenv's dvc) in the project."""
    return _run([sys.executable, "-m", "dvc", *args], root, f"dvc {' '.join(args[:2])}")


def git(root: Path, *args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> str:
    """Run `git ARGS` in the project."""
    return _run(["git", *args], root, f"git {args[0]}", env=env, stdin=stdin)


def require_repository(root: Path) -> None:
    """Raise unless the project is a git repository with DVC initialised."""
    if not (root / ".git").exists():
        raise RepositoryError("the project is not a git repository", where=str(root),
                              hint="run `git init` there, then `pose-sync init`")
    if not (root / ".dvc").is_dir() or not (root / ".dvc" / "config").exists():
        raise RepositoryError("DVC is not initialised in the project", where=str(root), hint="run `pose-sync init`")


@dataclass(frozen=True)
class RemoteInfo:
    name: str
    url: str
    kind: str  # r2 | local
    config_file: str = ".dvc/config"  # where the remote is written: .dvc/config (shared) or .dvc/config.local
    to_commit: tuple[str, ...] = ()  # what init changed that git should record

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "kind": self.kind, "config_file": self.config_file,
                "to_commit": list(self.to_commit)}


@contextmanager
def open_repo(root: Path) -> Iterator[Any]:
    """DVC's own Repo, in-process: one import instead of a dvc process per small step.

    DVC's chatter goes to stderr-less quiet; its failures become ToolError with DVC's message.
    """
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    logger = logging.getLogger("dvc")
    level = logger.level
    # DVC's hints ("To track the changes with git, run ...") are for its own CLI; our summary says it.
    logger.setLevel(logging.ERROR)
    try:
        # DVC resolves targets and stage folders against the working directory.
        with contextlib.chdir(root), contextlib.redirect_stdout(io.StringIO()), Repo(str(root)) as repo:
            yield repo
    except DvcException as exc:
        raise ToolError(f"dvc failed: {redact(str(exc))}", where=str(root),
                        hint="run `dvc doctor` and `dvc status` in the project to see more") from None
    finally:
        logger.setLevel(level)


def configure_remote(settings: Settings, credentials: R2Credentials | None) -> RemoteInfo:
    """Make the DVC remote the default: R2 at s3://<bucket>/<dvc prefix>, or a local folder.

    R2 is every clone's remote: its URL, endpoint and region go into `.dvc/config` (committed);
    credentials stay in the environment / `.env`, from where the virtualenv's start-up hook hands them
    to dvc (see envhook). A local folder is this machine's alone, so, as `dvc remote add --local` does,
    it goes into `.dvc/config.local` (git-ignored), where it also overrides a shared R2 default on this
    machine only. The cache link type, probed on this machine's filesystem, is machine-local too.
    """
    root = settings.root
    if not (root / ".dvc" / "config").exists():
        from dvc.repo import Repo

        with contextlib.redirect_stdout(io.StringIO()):
            Repo.init(str(root), force=(root / ".dvc").exists())
    link_type = cache_type(root)
    with open_repo(root) as repo:
        with repo.config.edit("repo") as shared:
            shared["core"]["analytics"] = "false"
            if credentials:
                info = RemoteInfo(R2_REMOTE, f"s3://{settings.bucket}/{settings.prefixes.dvc.rstrip('/')}", "r2")
                shared["remote"][R2_REMOTE] = {"url": info.url, "endpointurl": credentials.endpoint_url,
                                               "region": "auto"}
                shared["core"]["remote"] = R2_REMOTE
            else:
                folder = settings.dvc_local_remote.resolve()
                folder.mkdir(parents=True, exist_ok=True)
                info = RemoteInfo(LOCAL_REMOTE, str(folder), "local", ".dvc/config.local")
                # An earlier version wrote this machine's folder into the shared file: take it out.
                shared["remote"].pop(LOCAL_REMOTE, None)
                if shared["core"].get("remote") == LOCAL_REMOTE:
                    del shared["core"]["remote"]
        with repo.config.edit("local") as mine:
            mine["cache"]["type"] = link_type
            if credentials:
                if mine["core"].get("remote") == LOCAL_REMOTE:  # else it would still win over R2 here
                    del mine["core"]["remote"]
            else:
                mine["remote"][LOCAL_REMOTE] = {"url": info.url}
                mine["core"]["remote"] = LOCAL_REMOTE
    changed: tuple[str, ...] = ()
    if (root / ".git").exists():  # config.local is git-ignored (DVC's .dvc/.gitignore): never listed here
        status = git(root, "status", "--porcelain", "--untracked-files=all", "--", ".dvc", ".dvcignore")
        changed = tuple(sorted(line[3:] for line in status.splitlines() if line))
    return RemoteInfo(info.name, info.url, info.kind, info.config_file, changed)


REMOTE_CONFIG_FILES = {"local": ".dvc/config.local", "repo": ".dvc/config", "global": "DVC's global config",
                       "system": "DVC's system config"}


def remote_in_effect(root: Path) -> dict[str, str] | None:
    """The default DVC remote as dvc will use it here: name, url and the config file that makes it the
    default (config.local wins over .dvc/config); None when DVC has no default remote or no config."""
    if not (root / ".dvc" / "config").exists():
        return None
    try:
        with open_repo(root) as repo:
            name = repo.config["core"].get("remote")
            if not name:
                return None
            url = str(repo.config["remote"].get(name, {}).get("url", ""))
            level = next((lv for lv in ("local", "repo", "global", "system")
                          if repo.config.read(lv).get("core", {}).get("remote") == name), "repo")
    except ToolError:  # a config DVC cannot read: `dvc doctor` says why; showing the settings must still work
        return None
    return {"name": name, "url": url, "config_file": REMOTE_CONFIG_FILES[level]}


def default_remote(root: Path) -> str | None:
    """The name of the default DVC remote, if one is set."""
    with open_repo(root) as repo:
        return repo.config["core"].get("remote") or None


def track(root: Path, folders: list[Path]) -> list[Path]:
    """`dvc add` each folder (one .dvc file per batch); return the .dvc files."""
    if not folders:
        return []
    targets = [str(f.relative_to(root)) for f in folders]
    with open_repo(root) as repo:
        repo.add(targets)  # links the files into the cache with the cache type set by configure_remote
    return [f.with_name(f.name + ".dvc") for f in folders]


def move(root: Path, source: Path, dest: Path) -> None:
    """`dvc move`: the data, its .dvc file and the .gitignore entries move together."""
    with open_repo(root) as repo:
        repo.move(str(source.relative_to(root)), str(dest.relative_to(root)))


def not_pushed(root: Path, dvc_files: list[Path]) -> set[str]:
    """Which of these .dvc files have data missing from the default remote (`dvc status -c`)."""
    if not dvc_files:
        return set()
    if default_remote(root) is None:
        return {f.name.removesuffix(".dvc") for f in dvc_files}
    out = dvc(root, "status", "-c", "--json", *[str(f.relative_to(root)) for f in dvc_files])
    report: dict[str, Any] = json.loads(out or "{}")
    missing = set()
    for key in report:
        name = Path(key).name.removesuffix(".dvc")
        missing.add(name)
    return missing


def git_status(root: Path) -> list[str]:
    """`git status --porcelain` lines."""
    return [line for line in git(root, "status", "--porcelain", "--untracked-files=all").splitlines() if line]


PARAMS_FILE = "params.yaml"


def commit(root: Path, paths: list[Path], message: str) -> str:
    """Commit exactly these paths as they are in the workspace, and return the new commit id.

    params.yaml is the exception: what is committed is HEAD's version with only the batch lists the tool
    keeps taken from the workspace (params.text_to_commit), so an unrelated edit you have not committed
    stays uncommitted in the workspace instead of riding along in "Pull pose batches". Anything else you
    have staged stays staged and out of this commit.
    """
    from pose_factory.dataset import params

    rels = [p.relative_to(root).as_posix() for p in paths]
    files = [rel for rel in rels if rel != PARAMS_FILE]
    params_blob = None
    if PARAMS_FILE in rels:
        text = params.text_to_commit((root / PARAMS_FILE).read_text(), _head_file(root, PARAMS_FILE))
        params_blob = git(root, "hash-object", "-w", "--stdin", f"--path={PARAMS_FILE}", stdin=text).strip()

    def stage(env: dict[str, str] | None) -> None:
        if files:
            git(root, "add", "-A", "--", *files, env=env)
        if params_blob:
            git(root, "update-index", "--add", "--cacheinfo", f"100644,{params_blob},{PARAMS_FILE}", env=env)

    # Your index first (killed right after, the change is staged and visible in `git status`), then the
    # commit, from a private index that holds HEAD plus exactly these changes.
    stage(None)
    private = root / git(root, "rev-parse", "--git-path", "pose-sync-commit.index").strip()
    private.unlink(missing_ok=True)
    try:
        env = {"GIT_INDEX_FILE": str(private)}
        if _has_head(root):
            git(root, "read-tree", "HEAD", env=env)
        stage(env)
        git(root, "commit", "-q", "-m", message, env=env)
    finally:
        private.unlink(missing_ok=True)
    return git(root, "rev-parse", "HEAD").strip()


def _has_head(root: Path) -> bool:
    try:
        git(root, "rev-parse", "--verify", "-q", "HEAD")
        return True
    except ToolError:
        return False


def _head_file(root: Path, rel: str) -> str | None:
    """A file as HEAD has it, or None when there is no HEAD or no such file in it."""
    try:
        return git(root, "show", f"HEAD:{rel}")
    except ToolError:
        return None

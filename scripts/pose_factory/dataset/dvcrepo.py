"""The git + DVC side: run real `git` and `dvc` commands on the project, configure the DVC remote,
track batches and keep `params.yaml` in step with what is in the mirror.
"""

from __future__ import annotations

import configparser
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

from pose_factory.core.console import log_command
from pose_factory.core.errors import RepositoryError, ToolError
from pose_factory.core.settings import R2Credentials, Settings, redact

log = logging.getLogger(__name__)
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
    log_command(log, command)
    try:
        done = subprocess.run(command, cwd=root, capture_output=True, text=True, env=full_env, input=stdin)
    except FileNotFoundError:
        raise ToolError(f"cannot run {command[0]}", where=what, hint="install it (make setup installs dvc)") from None
    verbose = log.isEnabledFor(logging.INFO)
    if verbose and done.stderr.strip():  # -v: the command's own log, whole (its stdout is what we parse)
        log.info("%s", done.stderr.rstrip())
    if done.returncode != 0:
        if verbose and done.stdout.strip():
            log.info("%s", done.stdout.rstrip())
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-6:])
        raise ToolError(f"{what} failed:\n{redact(tail)}", where=str(root),
                        hint="its whole output is above" if verbose
                        else "run it again with -v to see the whole output")
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


def _dvc_console_to_stderr() -> None:
    """Point DVC's console handlers at this moment's stderr.

    `import dvc` binds its handlers to whatever sys.stdout and sys.stderr were at the time (its
    dvc.logger.setup()): imported while a caller had swapped the streams (a test's capture, since closed), DVC
    would write to stdout (into `--json` output) or to a closed file. Its chatter belongs on stderr, where -v
    shows it.
    """
    for name in ("dvc", "dvc_objects", "dvc_data"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is not sys.stderr:
                with handler.lock or contextlib.nullcontext():
                    handler.stream = sys.stderr  # not setStream(): it flushes the old stream, perhaps closed


@contextmanager
def open_repo(root: Path) -> Iterator[Any]:
    """DVC's own Repo, in-process: one import instead of a dvc process per small step.

    DVC's chatter goes to stderr-less quiet; its failures become ToolError with DVC's message.
    """
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    _dvc_console_to_stderr()
    logger = logging.getLogger("dvc")
    level = logger.level
    # DVC's hints ("To track the changes with git, run ...") are for its own CLI; our summary says it. With -v
    # its whole log shows.
    if not log.isEnabledFor(logging.INFO):
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


def track(root: Path, folders: list[Path], md5s: dict[Path, dict[str, tuple[int, str]]] | None = None, *,
          step: str = "pull", seal_dir: Path | None = None) -> list[Path]:
    """`dvc add` each folder (one .dvc file per batch) from the md5s the pull computed; return the .dvc files.

    See dvccache: the same cache objects, .dir object, .dvc file and state DVC writes, in one pass.
    """
    from pose_factory.dataset import dvccache

    return [added.dvc_file for added in dvccache.add(root, folders, md5s, step=step, seal_dir=seal_dir)]


def move(root: Path, source: Path, dest: Path) -> None:
    """`dvc move`: the data, its .dvc file and the .gitignore entries move together."""
    with open_repo(root) as repo:
        repo.move(str(source.relative_to(root)), str(dest.relative_to(root)))


def not_pushed(root: Path, dvc_files: list[Path]) -> set[str]:
    """Which of these .dvc files have data missing from the default remote (`dvc status -c`).

    A `dvc` process, not DVC in-process: the virtualenv's start-up hook gives that process the R2
    credentials under the names DVC reads, whatever this process's environment looked like when it began.
    """
    if not dvc_files:
        return set()
    if default_remote(root) is None:
        return {f.name.removesuffix(".dvc") for f in dvc_files}
    out = dvc(root, "status", "-c", "--json", *[str(f.relative_to(root)) for f in dvc_files])
    report: dict[str, str] = json.loads(out or "{}")
    outs = {f.name.removesuffix(".dvc"): f.with_name(f.name.removesuffix(".dvc")).relative_to(root).as_posix()
            for f in dvc_files}
    # "new": only in the cache; "missing": nowhere. "deleted" means the remote has it (the cache lost it).
    keys = [key for key, state in report.items() if state in ("new", "missing")]
    return {name for name, out in outs.items() if any(k == out or k.startswith(out + "/") for k in keys)}


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
# --- what pull, archive, restore and repair need beyond `dvc add` -----------------------------------

def _gitignore_entry(name: str) -> str:
    from pathspec.patterns.gitwildmatch import GitWildMatchPattern

    return "/" + GitWildMatchPattern.escape(name)  # the form DVC itself writes


def ensure_gitignored(folder: Path, name: str) -> None:
    """Add `/<name>` to folder/.gitignore (as `dvc add` does) unless it is there.

    Pull does it before a batch enters the mirror, so even a batch that a crash leaves untracked is
    never committed into git as images.
    """
    from pose_factory.core.fsutil import atomic_write_path

    gitignore = folder / ".gitignore"
    entry = _gitignore_entry(name)
    # git reads .gitignore as bytes: lines that are not UTF-8 are kept as they are (surrogateescape).
    text = gitignore.read_text(encoding="utf-8", errors="surrogateescape") if gitignore.exists() else ""
    if entry in (line.strip() for line in text.splitlines()):
        return
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_write_path(gitignore) as tmp:
        tmp.write_text(text + ("" if not text or text.endswith("\n") else "\n") + entry + "\n", encoding="utf-8",
                       errors="surrogateescape")


def remove_gitignore_entry(folder: Path, name: str) -> None:
    """Remove `/<name>` from folder/.gitignore; an emptied .gitignore is deleted (as `dvc remove` does)."""
    from pose_factory.core.fsutil import atomic_write_path

    gitignore = folder / ".gitignore"
    if not gitignore.exists():
        return
    entry = _gitignore_entry(name)
    lines = gitignore.read_text(encoding="utf-8", errors="surrogateescape").splitlines(keepends=True)
    kept = [line for line in lines if line.strip() != entry]
    if len(kept) == len(lines):
        return
    if not any(line.strip() for line in kept):
        gitignore.unlink()
        return
    with atomic_write_path(gitignore) as tmp:
        tmp.write_text("".join(kept), encoding="utf-8", errors="surrogateescape")


def workspace_status(root: Path, dvc_files: list[Path]) -> dict[Path, str]:
    """How each tracked folder differs from its .dvc file: {dvc file: problem} for those that differ.

    Problems as DVC names them: "modified" (files changed, added or removed), "deleted" (the folder is
    not in the workspace), "not in cache" (the cache lost an object, as when a file hardlinked into the
    cache was edited in place: DVC then drops the damaged object from the cache); and DAMAGED_DVC_FILE for a
    .dvc file that records no folder (cut short, edited by hand), which DVC is not asked about.
    """
    if not dvc_files:
        return {}
    # A .dvc file DVC cannot read would end DVC's status with a traceback, for every batch asked about.
    problems: dict[Path, str] = {f: DAMAGED_DVC_FILE for f in dvc_files if recorded_out(f) is None}
    by_name = {f.relative_to(root).as_posix(): f for f in dvc_files if f not in problems}
    if not by_name:
        return problems
    with open_repo(root) as repo:
        report = repo.status(targets=list(by_name))
    for key, changes in report.items():
        for change in changes if isinstance(changes, list) else []:
            outs = change.get("changed outs", {}) if isinstance(change, dict) else {}
            for problem in outs.values():
                problems[by_name.get(key, root / key)] = problem
    return problems


DAMAGED_DVC_FILE = "damaged .dvc file"


def damaged_dvc_file_error(dvc_file: Path) -> RepositoryError:
    """The error for a .dvc file that records no folder: what to do about it."""
    return RepositoryError("the .dvc file does not record a folder (cut short or edited by hand)", where=str(dvc_file),
                           hint=f"restore it from git: `git checkout -- {dvc_file.name}` (in its folder); a batch "
                                "that was never committed: delete it and pull the batch again")


def recorded_out(dvc_file: Path) -> dict[str, Any] | None:
    """What a .dvc file records of its folder (md5, size, nfiles, path), or None if it cannot be read.

    The one reader of .dvc files: DVC writes them, so anything unreadable means damaged, not a user's typo.
    """
    try:
        text = dvc_file.read_text()
    except (OSError, ValueError):
        return None
    return parse_recorded_out(text)


def parse_recorded_out(text: str) -> dict[str, Any] | None:
    """recorded_out of a .dvc file's text (as `git show <commit>:<path>` gives a committed one)."""
    import yaml

    try:
        out = yaml.safe_load(text)["outs"][0]
    except (ValueError, yaml.YAMLError, KeyError, IndexError, TypeError):
        return None
    # DVC itself needs both: a .dvc file without `path` makes its loader fail with a KeyError.
    if not isinstance(out, dict) or not isinstance(out.get("md5"), str) or not isinstance(out.get("path"), str):
        return None
    return out


def tracked_files(root: Path, dvc_file: Path) -> list[tuple[str, str]]:
    """(relative path, md5) of every file the .dvc file records for its folder, from DVC's .dir object."""
    out = recorded_out(dvc_file)
    if out is None:
        raise damaged_dvc_file_error(dvc_file)
    dir_md5 = out["md5"]
    with open_repo(root) as repo:
        listing = Path(repo.cache.local.oid_to_path(dir_md5))
        if not _object_intact(listing, dir_md5.removesuffix(".dir")):
            listing.unlink(missing_ok=True)
            with contextlib.suppress(ToolError):
                fetch_objects(root, [dvc_file])
    try:
        return [(e["relpath"], e["md5"]) for e in json.loads(listing.read_text())]
    except (OSError, ValueError, KeyError, TypeError):
        raise RepositoryError("the list of the batch's files is missing from the DVC cache and remote",
                              where=str(listing), hint="run `dvc fetch` with access to the DVC remote") from None


def cache_object(root: Path, md5: str) -> Path:
    """Where DVC keeps the object with this md5 in the project's cache."""
    with open_repo(root) as repo:
        return Path(repo.cache.local.oid_to_path(md5))


def _object_intact(path: Path, md5: str) -> bool:
    from pose_factory.core.fsutil import file_md5

    return path.is_file() and file_md5(path) == md5


def damaged_objects(root: Path, files: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (path, md5) whose cache object is missing or no longer hashes to its md5; damaged ones are deleted."""
    damaged = []
    with open_repo(root) as repo:
        paths = {md5: Path(repo.cache.local.oid_to_path(md5)) for _, md5 in files}
    for rel, md5 in files:
        obj = paths[md5]
        if not _object_intact(obj, md5):
            obj.unlink(missing_ok=True)
            damaged.append((rel, md5))
    return damaged


def install_object(root: Path, md5: str, source: Path) -> None:
    """Put a file whose md5 was checked into the cache as that object (read-only, as DVC keeps them)."""
    dest = cache_object(root, md5)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, dest)
    dest.chmod(0o444)


def fetch_objects(root: Path, dvc_files: list[Path]) -> None:
    """`dvc fetch` these targets from the default DVC remote into the cache (a `dvc` process: see not_pushed)."""
    dvc(root, "fetch", *[f.relative_to(root).as_posix() for f in dvc_files])


def checkout(root: Path, dvc_files: list[Path], *, force: bool = False) -> None:
    """`dvc checkout` these targets: the workspace gets exactly what the .dvc files record."""
    targets = [f.relative_to(root).as_posix() for f in dvc_files]
    log_command(log, ["dvc", "checkout", *(["--force"] if force else []), *targets])  # in this process
    with open_repo(root) as repo:
        repo.checkout(targets=targets, force=force)


def read_config(root: Path) -> tuple[configparser.ConfigParser, ...]:
    """.dvc/config.local, then .dvc/config (DVC's precedence), parsed without importing DVC. A file that cannot
    be read as UTF-8 INI counts as empty here: DVC reports it, naming the file, when the project is opened."""
    parsers = []
    for name in ("config.local", "config"):
        parser = configparser.ConfigParser()
        try:
            parser.read(root / ".dvc" / name, encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError):
            parser = configparser.ConfigParser()
        parsers.append(parser)
    return tuple(parsers)


def config_value(root: Path, section: str, key: str,
                 parsers: tuple[configparser.ConfigParser, ...] | None = None) -> str | None:
    """A value from .dvc/config.local or .dvc/config (read_config, or the parsers it gave)."""
    for parser in parsers if parsers is not None else read_config(root):
        if parser.has_option(section, key):
            return parser.get(section, key).strip().strip("'\"")  # DVC quotes values that hold a comma
    return None


def cache_copies(root: Path, folder: Path) -> bool:
    """Whether `dvc add` of a folder costs its size again on disk (the cache copies instead of linking)."""
    first = (config_value(root, "cache", "type") or "reflink,copy").split(",")[0].strip()
    configured = config_value(root, "cache", "dir")
    cache_dir = root / ".dvc" / (configured or "cache")  # relative to .dvc/, as DVC reads it; absolute wins
    probe_cache = next(p for p in (cache_dir, *cache_dir.parents) if p.exists())
    probe_folder = next(p for p in (folder, *folder.parents) if p.exists())
    if probe_cache.stat().st_dev != probe_folder.stat().st_dev:
        return True  # no link across filesystems: DVC falls back to copying
    if first in ("hardlink", "symlink"):
        return False
    if first == "reflink":
        return cache_type(root) != "reflink,copy"  # copy-on-write clones cost nothing until a file changes
    return True


def uncommitted(root: Path, paths: list[Path]) -> list[Path]:
    """Which of these paths differ from the last commit (changed, new or deleted) according to git.

    params.yaml counts only when its batch lists differ: other edits there are yours, and `commit` leaves
    them out (params.text_to_commit).
    """
    from pose_factory.dataset import params

    if not paths:
        return []
    rels = [p.relative_to(root).as_posix() for p in paths]
    out = git(root, "status", "--porcelain", "--untracked-files=all", "--", *rels)
    changed = {line[3:].strip().strip('"') for line in out.splitlines() if line}
    if PARAMS_FILE in changed and (root / PARAMS_FILE).exists():
        head = _head_file(root, PARAMS_FILE)
        if head is not None and params.text_to_commit((root / PARAMS_FILE).read_text(), head) == head:
            changed.discard(PARAMS_FILE)
    return [p for p, rel in zip(paths, rels) if rel in changed]

"""What tests import: the project's paths and test credentials, the project and result types, real `git`,
`dvc` and script runs, and repositories made once and copied. Fixtures and hooks are in conftest.py.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "scripts") not in sys.path:
    sys.path.insert(0, str(REPO / "scripts"))

from pose_factory.cli import main as cli_main  # noqa: E402
from pose_factory.devtools.s3local import LocalS3Server  # noqa: E402

TEST_ACCESS_KEY = "test-access-key-0001"
TEST_SECRET_KEY = "test-secret-key-do-not-leak-0123456789"
ENV_NAMES = ("CLOUDFLARE_R2_ACCESS_KEY_ID", "CLOUDFLARE_R2_SECRET_ACCESS_KEY", "CLOUDFLARE_R2_ACCOUNT_ID",
             "POSE_FACTORY_R2_BUCKET", "POSE_FACTORY_R2_ENDPOINT", "POSE_FACTORY_CONFIG", "POSE_FACTORY_BACKEND",
             "POSE_FACTORY_ROOT", "POSE_FACTORY_DVC_LOCAL_REMOTE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
             "AWS_PROFILE")


def isolate_environment(patch: pytest.MonkeyPatch, folder: Path) -> None:
    """No developer credentials or settings; DVC's site cache and the local DVC remote in `folder`."""
    for name in ENV_NAMES:
        patch.delenv(name, raising=False)
    patch.setenv("DVC_SITE_CACHE_DIR", str(folder / "dvc-site-cache"))
    patch.setenv("DVC_NO_ANALYTICS", "1")
    patch.setenv("POSE_FACTORY_DVC_LOCAL_REMOTE", str(folder / "dvc-local-remote"))


@dataclass
class Project:
    """A fresh dataset project folder with the layout the tool expects."""

    root: Path
    baseline: frozenset = frozenset()

    def _files(self) -> set[str]:
        return {p.relative_to(self.root).as_posix() for p in self.root.rglob("*")
                if p.is_file() and p.relative_to(self.root).parts[0] not in ("data", "config", ".dvc", ".git")}

    def snapshot(self) -> None:
        """Remember the files that exist now, so later checks see only what the tool added."""
        self.baseline = frozenset(self._files())

    @property
    def bucket_dir(self) -> Path:
        return self.root / "data" / "local-bucket"

    def files_outside_data(self) -> list[str]:
        """Files that appeared outside data/ (and git's and DVC's own folders) since the snapshot."""
        return sorted(self._files() - self.baseline)


def new_project(root: Path) -> Project:
    """The folders of a fresh project (not yet a repository)."""
    for folder in ("config", ".dvc", "data/raw", "data/working", "data/archive"):
        (root / folder).mkdir(parents=True)
    return Project(root)


@dataclass
class Backend:
    """How a test reaches the bucket: the embedded local folder or the real S3 server."""

    name: str
    env: dict[str, str]
    server: LocalS3Server | None = None

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.env["POSE_FACTORY_R2_ENDPOINT"],
                            aws_access_key_id=TEST_ACCESS_KEY, aws_secret_access_key=TEST_SECRET_KEY,
                            config=Config(region_name="auto", s3={"addressing_style": "path"},
                                          request_checksum_calculation="when_required",
                                          response_checksum_validation="when_required"))


def s3_env(endpoint: str, bucket: str) -> dict[str, str]:
    return {"POSE_FACTORY_BACKEND": "r2", "POSE_FACTORY_R2_ENDPOINT": endpoint,
            "CLOUDFLARE_R2_ACCESS_KEY_ID": TEST_ACCESS_KEY, "CLOUDFLARE_R2_SECRET_ACCESS_KEY": TEST_SECRET_KEY,
            "POSE_FACTORY_R2_BUCKET": bucket}


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_script(args: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
               ) -> subprocess.CompletedProcess:
    """Run `python scripts/pose_sync.py ARGS` in a real subprocess, as the README shows."""
    full_env = {k: v for k, v in os.environ.items()}
    full_env.update(env or {})
    return subprocess.run([sys.executable, str(REPO / "scripts" / "pose_sync.py"), *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def ctrl_c_reaches_it() -> None:
    """For Popen's preexec_fn, in a test that presses Ctrl-C: SIGINT does what it does in a terminal. A shell that
    starts the suite in the background (`make test &`, a CI step) hands every process SIGINT ignored, and Python then
    never raises KeyboardInterrupt: the test would wait for an answer that cannot come."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def git(root: Path, *args: str) -> str:
    """Run real git in a test repository."""
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


def dvc(root: Path, *args: str, env: dict[str, str] | None = None, unset: tuple[str, ...] = (),
        check: bool = True) -> subprocess.CompletedProcess:
    """Run the virtualenv's real `dvc` executable, as a user would type it."""
    dvc_binary = Path(sys.executable).with_name("dvc")
    full_env = {k: v for k, v in os.environ.items() if k not in unset}
    result = subprocess.run([str(dvc_binary), *args], cwd=root, capture_output=True, text=True,
                            env={**full_env, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


PIPELINE_FILES = ("dvc.yaml", "params.yaml", "schemas", "scripts/pose_sync.py", "scripts/pose_stage.py",
                  "scripts/pose_factory", "config/local.example.yaml", "data/curation/.gitkeep")


def copy_tree(source: Path, dest: Path) -> Path:
    """Copy a repository built once into a test's folder, as it is on disk: symlinks stay symlinks, and files
    hardlinked to each other inside it (DVC's cache, the read-only mirror, the working set) stay hardlinked."""
    first_copy: dict[tuple[int, int], str] = {}

    def copy(src: str, dst: str) -> str:
        info = os.lstat(src)
        if info.st_nlink > 1:
            first = first_copy.setdefault((info.st_dev, info.st_ino), dst)
            if first != dst:
                os.link(first, dst)
                return dst
        return shutil.copy2(src, dst)

    shutil.copytree(source, dest, symlinks=True, copy_function=copy, dirs_exist_ok=True)
    return dest


skeletons: dict[bool, Path] = {}  # pipeline -> the git + DVC skeleton this worker made on first use
skeleton_home: list[Path] = []  # set by conftest's session fixture; a temporary folder outside pytest


def _skeleton(pipeline: bool) -> Path:
    """`git init` + `dvc init` (+ this project's pipeline files), made once per worker and copied per test:
    `dvc init` alone costs a second or more of CPU, and most integration tests start from it."""
    if pipeline in skeletons:
        return skeletons[pipeline]
    if not skeleton_home:
        import tempfile

        skeleton_home.append(Path(tempfile.mkdtemp(prefix="pose-factory-skeletons-")))
    root = skeleton_home[0] / ("pipeline" if pipeline else "data-only")
    root.mkdir(parents=True)
    shutil.copy(REPO / ".gitignore", root / ".gitignore")
    (root / "params.yaml").write_text("# Parameters the DVC pipeline reads.\nbatches: []\n")
    if pipeline:
        for name in PIPELINE_FILES:
            source, dest = REPO / name, root / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
            else:
                shutil.copy(source, dest)
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.email", "tester@example.invalid")
    git(root, "config", "user.name", "Tester")
    dvc(root, "init", "-q")
    if pipeline:  # the plot templates dvc.yaml names live in .dvc/plots/, which `dvc init` has just made
        shutil.copytree(REPO / ".dvc" / "plots", root / ".dvc" / "plots")
    skeletons[pipeline] = root
    return root


def make_repository(project: Project, cli, *, pipeline: bool) -> Project:
    """A dataset repository as a user has it: git + DVC, this project's .gitignore, `pose-sync init` done.

    With pipeline=True it also holds this project's dvc.yaml, params.yaml, schemas and code, as a clone does.
    `pose-sync init` runs here, for this test's backend and folders; the rest is copied from a skeleton.
    """
    root = project.root
    shutil.rmtree(root / ".dvc")
    copy_tree(_skeleton(pipeline), root)
    result = cli("init")
    assert result.code == 0, result.err
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "dataset repository")
    project.snapshot()
    return project


def quiet_cli(*args) -> Result:
    """Run `pose-sync ARGS` in-process outside a test function (no capsys there), capturing its output."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main([str(a) for a in args])
    return Result(code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def environment_of_a_test(base: Path) -> Iterator[pytest.MonkeyPatch]:
    """For module- or session-scoped fixtures, which build something once: the environment a test has
    (no credentials, DVC's folders in `base`), on the local backend, with the project at `base`/project."""
    before = dict(os.environ)
    try:
        with pytest.MonkeyPatch.context() as patch:
            isolate_environment(patch, base)
            patch.setenv("POSE_FACTORY_ROOT", str(base / "project"))
            patch.setenv("POSE_FACTORY_BACKEND", "local")
            yield patch
    finally:  # as clean_environment: what the code set itself (from a .env) goes too
        os.environ.clear()
        os.environ.update(before)


@contextlib.contextmanager
def building_once(base: Path, *, pipeline: bool) -> Iterator[tuple[Project, pytest.MonkeyPatch]]:
    """A repository at `base`/project to take further steps in (with `quiet_cli`, and the patch for more
    variables) in environment_of_a_test(); each test then gets its own copy_repository() of it."""
    with environment_of_a_test(base) as patch:
        yield make_repository(new_project(base / "project"), quiet_cli, pipeline=pipeline), patch


def copy_repository(template: Project, dest: Path, patch: pytest.MonkeyPatch) -> Project:
    """A private copy of a repository built once (its bucket, DVC cache and git history included), made the
    current project on the local backend, and the working directory.

    `pose-sync init` then points the copy's machine-local DVC remote (.dvc/config.local holds an absolute
    path) at this test's own folder, as a user does after moving a clone; it must find nothing to commit.
    """
    if dest.exists():
        shutil.rmtree(dest)
    copy_tree(template.root, dest)
    patch.setenv("POSE_FACTORY_ROOT", str(dest))
    patch.setenv("POSE_FACTORY_BACKEND", "local")
    patch.chdir(dest)
    result = quiet_cli("init")
    assert result.code == 0 and "nothing to commit" in result.out, result.out + result.err
    return Project(dest, template.baseline)


def build_pipeline_repository(base: Path, batches: list[tuple[str, int, int]]) -> Project:
    """A pipeline repository with these batches (id, seed, samples; 48x48) pulled, `dvc repro` run, committed.

    For module-scoped fixtures: expensive to make, so make it once and hand each test a copy_repository().
    """
    with building_once(base, pipeline=True) as (repo, patch):
        for hour, (batch_id, seed, samples) in enumerate(batches):
            patch.setenv("SOURCE_DATE_EPOCH", str(1793520000 + hour * 3600))
            publish_generated(base, quiet_cli, batch_id, samples=samples, seed=seed)
            assert quiet_cli("pull", batch_id, "-q").code == 0
        patch.delenv("SOURCE_DATE_EPOCH")
        dvc(repo.root, "repro", "-q")
        git(repo.root, "add", "-A")
        git(repo.root, "commit", "-q", "-m", "batches and their working set")
    return repo


def publish_generated(tmp_path: Path, cli, batch_id: str, *, samples: int = 3, seed: int = 1,
                      project: str = "run-cycle") -> Path:
    """Generate a small batch like a pod and publish it to the current backend; return its folder."""
    from pose_factory.core.settings import load_settings
    from pose_factory.producer.generate import default_job, generate_batch

    job = default_job(project, samples, (48, 48), seed=seed)
    made = generate_batch(job, tmp_path / f"pod-{seed}", load_settings(root=tmp_path), batch_id=batch_id,
                          replace=True, workers=1)
    result = cli("publish", made.batch_dir, "-q")
    assert result.code == 0, result.err
    return made.batch_dir


@contextlib.contextmanager
def counting_hashes():
    """Count the files DVC hashes (reads) while the block runs: the paths, in a list (not the listings it
    builds in memory to hash them)."""
    import dvc_data.hashfile.hash as dvc_hash

    tried: list[str] = []
    real = dvc_hash._hash_file

    def counted(path, *args, **kwargs):
        if not str(path).startswith("memory://"):
            tried.append(str(path))
        return real(path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dvc_hash, "_hash_file", counted)
        yield tried

"""Shared fixtures: one real S3 server (SeaweedFS on 127.0.0.1) per session, a fresh project folder per
test, a small generated batch, and the CLI driven the way a user drives it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pose_factory.cli import main as cli_main  # noqa: E402
from pose_factory.devtools.s3local import LocalS3Server  # noqa: E402

TEST_ACCESS_KEY = "test-access-key-0001"
TEST_SECRET_KEY = "test-secret-key-do-not-leak-0123456789"
ENV_NAMES = ("CLOUDFLARE_R2_ACCESS_KEY_ID", "CLOUDFLARE_R2_SECRET_ACCESS_KEY", "CLOUDFLARE_R2_ACCOUNT_ID",
             "POSE_FACTORY_R2_BUCKET", "POSE_FACTORY_R2_ENDPOINT", "POSE_FACTORY_CONFIG", "POSE_FACTORY_BACKEND",
             "POSE_FACTORY_ROOT", "POSE_FACTORY_DVC_LOCAL_REMOTE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
             "AWS_PROFILE")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server on loopback, shared by the whole session (starting one costs seconds)."""
    server = LocalS3Server(tmp_path_factory.mktemp("seaweedfs"), TEST_ACCESS_KEY, TEST_SECRET_KEY)
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    """No test sees the developer's real credentials or settings; DVC writes its site cache in tmp.

    The whole environment is put back afterwards: the code under test may set variables itself (`.env` values
    are loaded into os.environ), and those must not reach the next test on this worker.
    """
    before = dict(os.environ)
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site-cache"))
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setenv("POSE_FACTORY_DVC_LOCAL_REMOTE", str(tmp_path / "dvc-local-remote"))
    yield
    os.environ.clear()
    os.environ.update(before)


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


@pytest.fixture
def project(tmp_path, monkeypatch) -> Project:
    root = tmp_path / "project"
    for folder in ("config", ".dvc", "data/raw", "data/working", "data/archive"):
        (root / folder).mkdir(parents=True)
    monkeypatch.setenv("POSE_FACTORY_ROOT", str(root))
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


@pytest.fixture(params=["local", "s3"])
def backend(request, monkeypatch, project) -> Backend:
    """Each test using this runs twice: on the local-folder bucket and on the real S3 server."""
    if request.param == "local":
        env = {"POSE_FACTORY_BACKEND": "local"}
        chosen = Backend("local", env)
    else:
        server = request.getfixturevalue("s3_server")
        bucket = f"t-{uuid.uuid4().hex[:12]}"
        server.create_bucket(bucket)
        chosen = Backend("s3", s3_env(server.endpoint_url, bucket), server)
    for key, value in chosen.env.items():
        monkeypatch.setenv(key, value)
    return chosen


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys):
    """Run `pose-sync ARGS` in-process and capture what a user would see."""

    def run(*args: str) -> Result:
        capsys.readouterr()
        code = cli_main([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def run_script(args: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
               ) -> subprocess.CompletedProcess:
    """Run `python scripts/pose_sync.py ARGS` in a real subprocess, as the README shows."""
    full_env = {k: v for k, v in os.environ.items()}
    full_env.update(env or {})
    return subprocess.run([sys.executable, str(REPO / "scripts" / "pose_sync.py"), *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def template_batch(tmp_path_factory) -> Path:
    """One small generated batch (4 samples, 64x64), made once; tests copy it."""
    from pose_factory.core.settings import load_settings
    from pose_factory.producer.generate import default_job, generate_batch

    out = tmp_path_factory.mktemp("template")
    settings = load_settings(root=out)
    job = default_job("run-cycle", 4, (64, 64), seed=7)
    result = generate_batch(job, out / "batches", settings, batch_id="2026-11-20_run-cycle", workers=1)
    return result.batch_dir


@pytest.fixture
def batch(template_batch, tmp_path) -> Path:
    """A private copy of the template batch that a test may damage."""
    dest = tmp_path / "pod" / template_batch.name
    shutil.copytree(template_batch, dest)
    return dest


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


PIPELINE_FILES = ("dvc.yaml", "params.yaml", "schemas", "scripts/pose_sync.py", "scripts/pose_factory",
                  "config/local.example.yaml", "data/curation/.gitkeep")


def make_repository(project: Project, cli, *, pipeline: bool) -> Project:
    """A dataset repository as a user has it: git + DVC, this project's .gitignore, `pose-sync init` done.

    With pipeline=True it also holds this project's dvc.yaml, params.yaml, schemas and code, as a clone does.
    """
    root = project.root
    shutil.rmtree(root / ".dvc")
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
    result = cli("init")
    assert result.code == 0, result.err
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "dataset repository")
    project.snapshot()
    return project


@pytest.fixture
def repo(project, backend, cli) -> Project:
    """A data-only dataset repository (no pipeline), on each backend."""
    return make_repository(project, cli, pipeline=False)


@pytest.fixture
def pipeline_repo(project, cli, monkeypatch) -> Project:
    """A full dataset repository with the pipeline, on the embedded local backend."""
    monkeypatch.setenv("POSE_FACTORY_BACKEND", "local")
    return make_repository(project, cli, pipeline=True)


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


def quiet_cli(*args) -> Result:
    """Run `pose-sync ARGS` in-process outside a test function (no capsys), capturing its output."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main([str(a) for a in args])
    return Result(code, out.getvalue(), err.getvalue())


def build_pipeline_repository(base: Path, batches: list[tuple[str, int, int]]) -> Path:
    """A pipeline repository with these batches (id, seed, samples; 48x48) pulled, `dvc repro` run, committed.

    For module-scoped fixtures: expensive to make, so make it once and hand each test a copy_repository().
    """
    with pytest.MonkeyPatch.context() as patch:
        for name in ENV_NAMES:
            patch.delenv(name, raising=False)
        root = base / "project"
        for folder in ("config", ".dvc", "data/raw", "data/working", "data/archive"):
            (root / folder).mkdir(parents=True)
        patch.setenv("POSE_FACTORY_ROOT", str(root))
        patch.setenv("POSE_FACTORY_BACKEND", "local")
        patch.setenv("POSE_FACTORY_DVC_LOCAL_REMOTE", str(base / "dvc-remote"))
        patch.setenv("DVC_SITE_CACHE_DIR", str(base / "dvc-site-cache"))
        patch.setenv("DVC_NO_ANALYTICS", "1")
        make_repository(Project(root), quiet_cli, pipeline=True)
        for hour, (batch_id, seed, samples) in enumerate(batches):
            patch.setenv("SOURCE_DATE_EPOCH", str(1793520000 + hour * 3600))
            publish_generated(base, quiet_cli, batch_id, samples=samples, seed=seed)
            assert quiet_cli("pull", batch_id, "-q").code == 0
        patch.delenv("SOURCE_DATE_EPOCH")
        dvc(root, "repro", "-q")
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", "batches and their working set")
    return root


def copy_repository(template: Path, dest: Path, monkeypatch) -> Path:
    """A private copy of a built repository, made the current project (DVC's state is dropped: inodes differ)."""
    shutil.copytree(template, dest, symlinks=True, ignore=shutil.ignore_patterns("tmp"))
    monkeypatch.setenv("POSE_FACTORY_ROOT", str(dest))
    monkeypatch.setenv("POSE_FACTORY_BACKEND", "local")
    monkeypatch.chdir(dest)
    return dest

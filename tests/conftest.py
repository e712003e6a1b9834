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
from pose_factory.s3local import LocalS3Server  # noqa: E402

TEST_ACCESS_KEY = "test-access-key-0001"
TEST_SECRET_KEY = "test-secret-key-do-not-leak-0123456789"
ENV_NAMES = ("CLOUDFLARE_R2_ACCESS_KEY_ID", "CLOUDFLARE_R2_SECRET_ACCESS_KEY", "CLOUDFLARE_R2_ACCOUNT_ID",
             "POSE_FACTORY_R2_BUCKET", "POSE_FACTORY_R2_ENDPOINT", "POSE_FACTORY_CONFIG", "POSE_FACTORY_BACKEND",
             "POSE_FACTORY_ROOT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server on loopback, shared by the whole session (starting one costs seconds)."""
    server = LocalS3Server(tmp_path_factory.mktemp("seaweedfs"), TEST_ACCESS_KEY, TEST_SECRET_KEY)
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    """No test sees the developer's real credentials or settings; DVC writes its site cache in tmp."""
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site-cache"))
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")


@dataclass
class Project:
    """A fresh dataset project folder with the layout the tool expects."""

    root: Path

    @property
    def bucket_dir(self) -> Path:
        return self.root / "data" / "local-bucket"

    def files_outside_data(self) -> list[str]:
        """Every file the tool wrote outside data/ (there should be none beyond what the test made)."""
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*")
                      if p.is_file() and p.relative_to(self.root).parts[0] not in ("data", "config", ".dvc"))


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
    from pose_factory.generate import default_job, generate_batch
    from pose_factory.settings import load_settings

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

"""Versions that come back: plain `dvc push` / `dvc pull` / `git checkout` + `dvc checkout` restore every
batch byte for byte, on a second clone, against the real S3 server (and the local default remote).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from faultproxy import FaultProxy
from helpers import TEST_SECRET_KEY, dvc, git, publish_generated, run_script

BATCH = "2026-11-20_run-cycle"


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_second_clone_restores_every_version(repo, cli, tmp_path):
    first = publish_generated(tmp_path / "v1", cli, BATCH, seed=1)
    assert cli("pull", BATCH, "--commit", "-q").code == 0
    v1 = tree_bytes(first)
    dvc(repo.root, "push", "-q")
    second = publish_generated(tmp_path / "v2", cli, BATCH, seed=2)
    assert cli("pull", BATCH, "--commit", "-q").code == 0
    v2 = tree_bytes(second)
    assert v1 != v2
    dvc(repo.root, "push", "-q")
    assert json.loads(dvc(repo.root, "status", "-c", "--json").stdout or "{}") == {}

    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo.root), str(clone))
    (clone / "config").mkdir(exist_ok=True)
    # Once per clone (a local-folder remote is machine-local, in .dvc/config.local).
    assert run_script(["init"], cwd=clone, env={"POSE_FACTORY_ROOT": str(clone)}).returncode == 0
    dvc(clone, "pull", "-q")
    mirror = clone / "data" / "raw" / "pose-factory" / BATCH
    assert tree_bytes(mirror) == v2

    # On the clone, an older version comes back with `dvc pull` (its cache holds only what it fetched).
    git(clone, "checkout", "-q", "HEAD~1")
    dvc(clone, "pull", "-q")
    assert tree_bytes(mirror) == v1
    assert dvc(clone, "status").stdout.strip().startswith(("Data and pipelines are up to date", "There are no"))

    # On the first machine the cache has both: `git checkout` + `dvc checkout` is enough, both ways.
    original = repo.root / "data" / "raw" / "pose-factory" / BATCH
    git(repo.root, "checkout", "-q", "HEAD~1")
    dvc(repo.root, "checkout", "-q")
    assert tree_bytes(original) == v1
    git(repo.root, "checkout", "-q", "main")
    dvc(repo.root, "checkout", "-q")
    assert tree_bytes(original) == v2


def test_no_secret_is_written_to_any_file(repo, cli, tmp_path, backend):
    publish_generated(tmp_path, cli, BATCH)
    assert cli("pull", BATCH, "--commit", "-q").code == 0
    dvc(repo.root, "push", "-q")
    for path in repo.root.rglob("*"):
        if path.is_file() and ".dvc/cache" not in path.as_posix():
            assert TEST_SECRET_KEY.encode() not in path.read_bytes(), path
    if backend.name == "s3":
        config = (repo.root / ".dvc" / "config").read_text()
        assert "endpointurl" in config and "region = auto" in config and "secret" not in config


@pytest.mark.parametrize("backend", ["s3"], indirect=True)
def test_plain_dvc_sends_no_checksum_headers_that_r2_rejects(repo, cli, tmp_path, s3_server, backend):
    """The virtualenv's start-up hook is what makes plain `dvc push` work against R2: prove both ways."""
    publish_generated(tmp_path, cli, BATCH)
    assert cli("pull", BATCH, "-q").code == 0
    with FaultProxy(s3_server.endpoint_url) as proxy:
        proxy.reject_checksum_headers = True
        dvc(repo.root, "remote", "modify", "r2", "endpointurl", proxy.url)
        without_hook = dvc(repo.root, "push", env={"POSE_FACTORY_ENVHOOK": "off", "AWS_ACCESS_KEY_ID":
                           backend.env["CLOUDFLARE_R2_ACCESS_KEY_ID"], "AWS_SECRET_ACCESS_KEY": TEST_SECRET_KEY},
                           unset=("AWS_REQUEST_CHECKSUM_CALCULATION", "AWS_RESPONSE_CHECKSUM_VALIDATION"), check=False)
        assert without_hook.returncode != 0 and proxy.checksum_rejections > 0
        proxy.checksum_rejections = 0
        # Nothing exported by hand: the hook sets the checksum mode and maps CLOUDFLARE_* -> AWS_*.
        with_hook = dvc(repo.root, "push", unset=("AWS_REQUEST_CHECKSUM_CALCULATION",
                                                  "AWS_RESPONSE_CHECKSUM_VALIDATION", "AWS_ACCESS_KEY_ID",
                                                  "AWS_SECRET_ACCESS_KEY"))
        assert with_hook.returncode == 0 and proxy.checksum_rejections == 0
        assert dvc(repo.root, "status", "-c").returncode == 0
        assert not any("rejected" in outcome for _, _, outcome in proxy.log[-5:])


def test_envhook_reads_credentials_from_the_project_dotenv(tmp_path):
    from pose_factory.core.envhook import apply

    root = tmp_path / "proj"
    (root / ".dvc").mkdir(parents=True)
    (root / "config").mkdir()
    (root / ".env").write_text("CLOUDFLARE_R2_ACCESS_KEY_ID=abc\nexport CLOUDFLARE_R2_SECRET_ACCESS_KEY='xyz'\n")
    environ: dict[str, str] = {}
    apply(environ, cwd=root / "config")
    assert environ["AWS_ACCESS_KEY_ID"] == "abc" and environ["AWS_SECRET_ACCESS_KEY"] == "xyz"
    assert environ["AWS_REQUEST_CHECKSUM_CALCULATION"] == "when_required"
    kept = {"AWS_ACCESS_KEY_ID": "mine", "AWS_REQUEST_CHECKSUM_CALCULATION": "when_supported"}
    apply(kept, cwd=root)
    assert kept["AWS_ACCESS_KEY_ID"] == "mine" and kept["AWS_REQUEST_CHECKSUM_CALCULATION"] == "when_supported"
    outside: dict[str, str] = {}
    apply(outside, cwd=tmp_path)
    assert "AWS_ACCESS_KEY_ID" not in outside


@pytest.mark.integration
def test_the_virtualenv_has_the_hook_installed():
    import subprocess
    import sys

    probe = "import os; print(os.environ.get('AWS_REQUEST_CHECKSUM_CALCULATION'))"
    result = subprocess.run([sys.executable, "-c", probe],
                            capture_output=True, text=True, cwd="/", env={"PATH": "/usr/bin:/bin"})
    assert result.stdout.strip() == "when_required", "run `make setup`: it installs the start-up hook"

"""The local machine fails too: a full disk, a read-only `data/`, missing permissions, broken or hostile
settings files, and a `.env` that `pose-sync` and `dvc` must read the same way.

Each failure is an `error:` line naming the file, a `hint:` line and the documented exit code: never a
traceback. A full disk is a real small tmpfs where the sandbox lets root mount one (else a file-size limit
on the process, which makes writes fail with EFBIG); a read-only `data/` is a read-only bind mount (else
the command runs as `nobody`, since root ignores file modes).
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from helpers import REPO, make_repository, publish_generated
from pose_factory.core.errors import ConfigError, DiskFullError, LocalFileError, LocalPermissionError, from_os_error

BATCH = "2026-11-20_run-cycle"
POSE_SYNC = [sys.executable, str(REPO / "scripts" / "pose_sync.py")]


def _mount(*args: str) -> bool:
    if os.environ.get("POSE_FACTORY_TEST_NO_MOUNT"):  # to exercise the fallbacks where mounting works
        return False
    return os.geteuid() == 0 and subprocess.run(["mount", *args], capture_output=True).returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextmanager
def mounted_tmpfs(path: Path, size_kb: int) -> Iterator[bool]:
    """A tmpfs of size_kb at path (True), or nothing where mounting is not allowed (False)."""
    path.mkdir(parents=True, exist_ok=True)
    if not _mount("-t", "tmpfs", "-o", f"size={size_kb}k,mode=0755", "tmpfs", str(path)):
        yield False
        return
    try:
        yield True
    finally:
        _umount(path)


def _fill(folder: Path) -> None:
    """Use up every free block of the file system holding folder."""
    fd = os.open(folder / "filler.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for chunk in (65536, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def run(args: list[str], cwd: Path, preexec=None, user: str | None = None) -> subprocess.CompletedProcess:
    command = [*POSE_SYNC, *args]
    if user:
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    return subprocess.run(command, cwd=cwd, env=dict(os.environ), capture_output=True, text=True, timeout=180,
                          preexec_fn=preexec)


def assert_clean_error(result: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-2].startswith("error: ") and lines[-1].startswith("hint: "), result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


@pytest.mark.integration
def test_a_full_disk_is_a_clear_error_and_the_pull_resumes(tmp_path, monkeypatch, cli, project):
    small = tmp_path / "small"
    with mounted_tmpfs(small, 96 * 1024) as on_tmpfs:  # pull keeps 64 MB spare
        if on_tmpfs:  # the whole project on a small disk, which is then filled up
            project.root = small / "project"
            for folder in ("config", ".dvc", "data/raw", "data/working", "data/archive"):
                (project.root / folder).mkdir(parents=True)
            monkeypatch.setenv("POSE_FACTORY_ROOT", str(project.root))
        # The bucket stays on the big disk.
        (project.root / "config" / "local.yaml").write_text(f"storage:\n  local_bucket_dir: {tmp_path / 'bucket'}\n")
        monkeypatch.setenv("POSE_FACTORY_BACKEND", "local")
        repo = make_repository(project, cli, pipeline=False)
        publish_generated(tmp_path, cli, BATCH, samples=2)
        data = repo.root / "data"
        print(f"disk full made by {'a 96 MB tmpfs' if on_tmpfs else 'RLIMIT_FSIZE'}")
        if on_tmpfs:
            _fill(data)
            # pull checks the free space (and journals) before downloading; generate writes until ENOSPC.
            result = run(["pull", BATCH], repo.root)
            assert_clean_error(result, DiskFullError.exit_code, str(data))
            written = run(["generate", "--out", str(data / "pod-outbox"), "--samples", "1", "--size", "48x48",
                           "--workers", "1"], repo.root)
            assert_clean_error(written, DiskFullError.exit_code, "No space left on device", str(data / "pod-outbox"),
                               "free space")
        else:  # every file bigger than 1,000 bytes fails to be written, by both engines
            for engine in ("boto3", "rclone"):
                result = run(["pull", BATCH, "--engine", engine], repo.root, preexec=_limit_file_size(1000))
                assert_clean_error(result, DiskFullError.exit_code, "File too large", str(data), "free space")
        assert not (data / "raw" / "pose-factory" / BATCH).exists()
        assert repo.files_outside_data() == []
        for filler in data.glob("filler*.bin"):
            filler.unlink()
        again = run(["pull", BATCH], repo.root)
        assert again.returncode == 0, again.stderr
        assert (data / "raw" / "pose-factory" / BATCH / "manifest.json").is_file()


@pytest.mark.integration
def test_a_read_only_data_folder_is_a_clear_error(tmp_path, monkeypatch, cli, project):
    (project.root / "config" / "local.yaml").write_text(f"storage:\n  local_bucket_dir: {tmp_path / 'bucket'}\n")
    monkeypatch.setenv("POSE_FACTORY_BACKEND", "local")
    repo = make_repository(project, cli, pipeline=False)
    publish_generated(tmp_path, cli, BATCH, samples=1)
    data = repo.root / "data"
    if _mount("--bind", str(data), str(data)):
        try:
            assert _mount("-o", "remount,bind,ro", str(data))
            result = run(["pull", BATCH], repo.root)
        finally:
            _umount(data)
        assert_clean_error(result, LocalPermissionError.exit_code, str(data))  # pull checks before writing
    else:  # no mounts here: run as nobody, for whom the root-owned data/ is read-only
        for folder in (tmp_path, *tmp_path.parents[:3]):
            folder.chmod(folder.stat().st_mode | 0o055)
        for path in (tmp_path / "bucket").rglob("*"):  # objects are written 0600; let nobody read them
            path.chmod(path.stat().st_mode | 0o055)
        result = run(["pull", BATCH], repo.root, user="65534")
        assert_clean_error(result, LocalPermissionError.exit_code, str(data))
    assert not (data / "raw" / "pose-factory" / BATCH).exists()
    assert repo.files_outside_data() == []


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges with setpriv")
def test_a_folder_without_write_permission_is_a_clear_error(tmp_path):
    # As an ordinary user (root ignores file modes): the output folder belongs to root and is read-only.
    place = Path(tempfile.mkdtemp(prefix="pose-factory-perm-"))
    try:
        place.chmod(0o755)
        (place / "config").mkdir()
        (place / ".dvc").mkdir()
        out = place / "renders"
        out.mkdir(mode=0o755)
        env = {**os.environ, "POSE_FACTORY_ROOT": str(place)}
        result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *POSE_SYNC,
                                 "generate", "--out", str(out), "--samples", "1", "--size", "48x48", "--workers", "1"],
                                cwd=place, env=env, capture_output=True, text=True, timeout=180)
        assert_clean_error(result, LocalPermissionError.exit_code, "Permission denied", str(out), "permissions")
    finally:
        shutil.rmtree(place)


def test_os_errors_map_to_typed_errors_naming_the_file():
    cases = {errno.ENOSPC: DiskFullError, errno.EDQUOT: DiskFullError, errno.EFBIG: DiskFullError,
             errno.EROFS: LocalPermissionError, errno.EACCES: LocalPermissionError, errno.EPERM: LocalPermissionError,
             errno.EIO: LocalFileError, errno.ENAMETOOLONG: LocalFileError}
    for number, kind in cases.items():
        error = from_os_error(OSError(number, os.strerror(number), "/data/x.png"))
        assert type(error) is kind and error.where == "/data/x.png" and error.hint
    # One exit code for "the local machine refused a write" (DiskError, as pull's own checks raise); others are 1.
    assert (DiskFullError.exit_code, LocalPermissionError.exit_code, LocalFileError.exit_code) == (18, 18, 1)


# -- settings files ----------------------------------------------------------------------------

BOMB = "".join(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9 if prev else ['"lol"'] * 9) + "]\n"
               for prev, name in zip([None, *"abcdefgh"], "abcdefghi"))


@pytest.mark.parametrize("text,fragment", [
    (b"\x89PNG\r\n\x1a\n\x00\x00binary", "not UTF-8"),
    (b"bucket: x\x00y\n", "NUL byte"),
    (BOMB.encode(), "aliases"),
    (b"a: &a [1, *a]\n", "refers to a value that contains it"),
    (b"a: " + b"[" * 200 + b"]" * 200 + b"\n", "nested deeper"),
    (b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", "malformed YAML"),
], ids=["binary", "nul", "billion-laughs", "alias-cycle", "deep", "too-deep-for-libyaml"])
def test_a_bad_config_file_is_a_config_error(project, cli, text, fragment):
    path = project.root / "config" / "local.yaml"
    path.write_bytes(text)
    result = cli("config")
    assert result.code == ConfigError.exit_code, result.err
    assert "Traceback" not in result.err and fragment in result.err and str(path) in result.err


@pytest.mark.parametrize("text,fragment", [(b"\xff\xfe\x00b\x00a\x00", "not UTF-8"), (BOMB.encode(), "aliases")],
                         ids=["binary", "billion-laughs"])
def test_a_bad_params_file_is_a_config_error_for_every_reader(project, cli, text, fragment):
    from pose_factory.core.settings import load_settings
    from pose_factory.dataset.params import read_params

    params = project.root / "params.yaml"
    params.write_bytes(text)
    with pytest.raises(ConfigError) as info:  # pull, archive and restore read it this way
        read_params(load_settings())
    assert fragment in info.value.message and info.value.where == str(params)
    result = cli("materialize", "--params", params, "--raw", project.root / "data" / "raw",
                 "--out", project.root / "data" / "working" / "set")
    assert result.code == ConfigError.exit_code and fragment in result.err and "Traceback" not in result.err


def test_aliases_that_expand_a_little_are_fine(project, cli):
    (project.root / "config" / "local.yaml").write_text(
        "comfyui: &c {server: 'http://127.0.0.1:8188', queue_depth: 3, timeout_s: 60}\n"
        "storage: {concurrency: 4}\n")
    result = cli("config", "--json")
    assert result.code == 0, result.err


@pytest.mark.parametrize("setting", ["../elsewhere", "/tmp", "data/mirror"])
def test_data_root_is_no_longer_a_setting(project, cli, setting):
    (project.root / "config" / "local.yaml").write_text(f"data_root: {setting}\n")
    result = cli("config")
    assert result.code == ConfigError.exit_code and "data_root" in result.err, result.err
    assert "hint: " in result.err


def test_the_old_default_data_root_is_still_accepted(project, cli):
    (project.root / "config" / "local.yaml").write_text("data_root: data/raw\n")
    result = cli("config", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["data_root"] == str(project.root / "data" / "raw")


def test_review_out_naming_a_file_is_a_usage_error(project, cli):
    page = project.root / "review.html"
    page.write_text("mine")
    result = cli("review", "--out", page)
    assert result.code == 2 and str(page) in result.err and "Traceback" not in result.err
    assert page.read_text() == "mine"


# -- .env --------------------------------------------------------------------------------------

TRICKY_DOTENV = """\
# R2 credentials for this project
export CLOUDFLARE_R2_ACCESS_KEY_ID = "key id with spaces"
CLOUDFLARE_R2_SECRET_ACCESS_KEY=s3cr3t#part-of-it   # a comment after the value
CLOUDFLARE_R2_ACCOUNT_ID='quoted # not a comment'
POSE_FACTORY_R2_BUCKET=  spaced-bucket
EMPTY=
"""


@pytest.mark.integration
def test_cli_and_the_virtualenv_hook_read_dotenv_identically(project, monkeypatch):
    from pose_factory.core import envhook
    from pose_factory.core.settings import load_dotenv

    (project.root / ".env").write_text(TRICKY_DOTENV)
    for name in ("CLOUDFLARE_R2_ACCESS_KEY_ID", "CLOUDFLARE_R2_SECRET_ACCESS_KEY", "CLOUDFLARE_R2_ACCOUNT_ID",
                 "POSE_FACTORY_R2_BUCKET", "EMPTY"):
        monkeypatch.setenv(name, "")  # recorded, so what load_dotenv sets is removed after the test
        monkeypatch.delenv(name)
    load_dotenv(project.root)  # what pose-sync sees
    cli_key, cli_secret = os.environ["CLOUDFLARE_R2_ACCESS_KEY_ID"], os.environ["CLOUDFLARE_R2_SECRET_ACCESS_KEY"]
    assert (cli_key, cli_secret) == ("key id with spaces", "s3cr3t#part-of-it")
    assert os.environ["CLOUDFLARE_R2_ACCOUNT_ID"] == "quoted # not a comment"
    assert os.environ["POSE_FACTORY_R2_BUCKET"] == "spaced-bucket"

    hooked: dict[str, str] = {}
    envhook.apply(hooked, cwd=project.root)  # what the start-up hook hands to dvc, in-process ...
    assert (hooked["AWS_ACCESS_KEY_ID"], hooked["AWS_SECRET_ACCESS_KEY"]) == (cli_key, cli_secret)
    # ... and in a real interpreter of the virtualenv started in the project, as `dvc push` is.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLOUDFLARE_R2_", "AWS_"))}
    shown = subprocess.run([sys.executable, "-c", "import os; print(os.environ['AWS_ACCESS_KEY_ID']); "
                            "print(os.environ['AWS_SECRET_ACCESS_KEY'])"], cwd=project.root, env=env,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == [cli_key, cli_secret]

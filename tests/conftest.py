"""Shared fixtures: one real S3 server (SeaweedFS on 127.0.0.1) per session, a fresh project folder per
test, a small generated batch, and the CLI driven the way a user drives it; the hooks that mark and keep the
integration tier. What tests import lives in helpers.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

# `import dvc` binds DVC's log handlers to the sys.stdout/sys.stderr of that moment. Imported first inside a test,
# they would write to that test's capture, closed once it ends; imported here, they outlive every test.
import dvc  # noqa: E402, F401

import helpers  # noqa: E402
from pose_factory.cli import main as cli_main  # noqa: E402
from pose_factory.devtools.s3local import LocalS3Server  # noqa: E402

# A test that uses one of these (directly or through another fixture) runs real servers, git or dvc: it is
# marked `integration` automatically, and so is every run of a test on the real S3 server (backend "s3").
INTEGRATION_FIXTURES = frozenset({"s3_server", "repo", "pipeline_repo"})


def pytest_collection_modifyitems(config, items):
    """Mark the integration tier (`make test-fast` = `-m "not integration"` leaves it out)."""
    for item in items:
        on_s3 = getattr(item, "callspec", None) is not None and item.callspec.params.get("backend") == "s3"
        if on_s3 or INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


_PROCESSES = pytest.StashKey[list]()  # what a test not marked integration started, in any thread


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Keep the unit tier honest, so that it stays fast: note every process (git, dvc, rclone, Blender,
    Chromium, SeaweedFS, a script) that a test not marked `integration` starts, in itself, in a fixture it sets
    up or in a thread; `unit_tests_start_no_process` then fails the test."""
    if item.get_closest_marker("integration"):
        return (yield)
    started = item.stash[_PROCESSES] = []
    real_init = subprocess.Popen.__init__

    def noting(self, args, *more, **options):
        started.append(args)
        real_init(self, args, *more, **options)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess.Popen, "__init__", noting)
        return (yield)


@pytest.fixture(autouse=True)
def unit_tests_start_no_process(request):
    """Fail a test that is not marked `integration` but started a process (`make test-fast` runs no process)."""
    yield
    started = request.node.stash.get(_PROCESSES, [])
    if started:
        pytest.fail(f"this test starts {len(started)} process(es), the first {started[0]!r}: mark it "
                    "@pytest.mark.integration (tests/conftest.py)", pytrace=False)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server on loopback, shared by the whole session (starting one costs seconds)."""
    server = LocalS3Server(tmp_path_factory.mktemp("seaweedfs"), helpers.TEST_ACCESS_KEY, helpers.TEST_SECRET_KEY)
    server.start()
    yield server
    server.stop(grace_s=2)  # its data is thrown away: no need to wait out a slow shutdown at the end of the run


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    """No test sees the developer's real credentials or settings; DVC writes its site cache in tmp.

    The whole environment is put back afterwards: the code under test may set variables itself (`.env` values
    are loaded into os.environ), and those must not reach the next test on this worker.
    """
    before = dict(os.environ)
    helpers.isolate_environment(monkeypatch, tmp_path)
    yield
    os.environ.clear()
    os.environ.update(before)


@pytest.fixture
def project(tmp_path, monkeypatch) -> helpers.Project:
    monkeypatch.setenv("POSE_FACTORY_ROOT", str(tmp_path / "project"))
    return helpers.new_project(tmp_path / "project")


@pytest.fixture(params=["local", "s3"])
def backend(request, monkeypatch, project) -> helpers.Backend:
    """Each test using this runs twice: on the local-folder bucket and on the real S3 server."""
    if request.param == "local":
        env = {"POSE_FACTORY_BACKEND": "local"}
        chosen = helpers.Backend("local", env)
    else:
        server = request.getfixturevalue("s3_server")
        bucket = f"t-{uuid.uuid4().hex[:12]}"
        server.create_bucket(bucket)
        chosen = helpers.Backend("s3", helpers.s3_env(server.endpoint_url, bucket), server)
    for key, value in chosen.env.items():
        monkeypatch.setenv(key, value)
    return chosen


@pytest.fixture
def cli(capsys):
    """Run `pose-sync ARGS` in-process and capture what a user would see."""

    def run(*args: str) -> helpers.Result:
        capsys.readouterr()
        code = cli_main([str(a) for a in args])
        captured = capsys.readouterr()
        return helpers.Result(code, captured.out, captured.err)

    return run


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


@pytest.fixture(scope="session", autouse=True)
def _repository_skeleton_home(tmp_path_factory):
    """make_repository's git + DVC skeletons live in this session's temporary folder."""
    helpers.skeleton_home[:] = [tmp_path_factory.mktemp("repository-skeletons")]
    yield
    helpers.skeletons.clear()


@pytest.fixture
def repo(project, backend, cli) -> helpers.Project:
    """A data-only dataset repository (no pipeline), on each backend."""
    return helpers.make_repository(project, cli, pipeline=False)


@pytest.fixture
def pipeline_repo(project, cli, monkeypatch) -> helpers.Project:
    """A full dataset repository with the pipeline, on the embedded local backend."""
    monkeypatch.setenv("POSE_FACTORY_BACKEND", "local")
    return helpers.make_repository(project, cli, pipeline=True)

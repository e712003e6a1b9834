"""Local files that a crash, a bad merge or a clumsy edit damaged: every command that reads one names the file,
says what is wrong and what to do, and changes nothing. None ends in a traceback.

These cases were found by damaging each local file of a `make demo` project in turn (cut in half, binary
garbage, a JSON or YAML list or number where a mapping belongs) and running the user's commands on it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from helpers import build_pipeline_repository, copy_repository, git

pytestmark = pytest.mark.integration

RUN, WALK = "2026-11-02_run", "2026-11-02_walk"
MIRROR = Path("data/raw/pose-factory")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Two pulled batches, `dvc repro` run and committed: made once for the module."""
    return build_pipeline_repository(tmp_path_factory.mktemp("damaged"), [(RUN, 1, 3), (WALK, 2, 3)])


@pytest.fixture
def repo(built, tmp_path, monkeypatch) -> Path:
    return copy_repository(built, tmp_path / "project", monkeypatch).root


def damage(path: Path, data: bytes) -> None:
    """Write a new file in its place, as an editor saves one (a mirror file is read-only and hardlinked into
    DVC's cache: writing into it would change the cache's copy too)."""
    path.unlink(missing_ok=True)
    path.write_bytes(data)


def half(path: Path) -> bytes:
    data = path.read_bytes()
    return data[: len(data) // 2]


def refused(result, code: int, *fragments: str) -> str:
    assert result.code == code and "Traceback" not in result.err, (result.code, result.err)
    for fragment in fragments:
        assert fragment in result.err, result.err
    return result.err


@pytest.mark.parametrize("text", [b"5\n", b"- a\n- b\n", b"batches: 5\n"])
def test_diff_and_show_name_a_params_file_that_is_not_a_mapping_of_lists(repo, cli, tmp_path, text):
    damage(repo / "params.yaml", text)
    for command in (["diff"], ["show", WALK, "--out", str(tmp_path / "sheet")]):
        refused(cli(*command), 10, "params.yaml at workspace")
    assert not (tmp_path / "sheet").exists()


@pytest.mark.parametrize("how", ["half", "list"])
def test_diff_names_a_mirror_manifest_changed_by_hand(repo, cli, how):
    manifest = repo / MIRROR / RUN / "manifest.json"
    damage(manifest, half(manifest) if how == "half" else b"[]")
    err = refused(cli("diff"), 6, f"{MIRROR}/{RUN}/manifest.json at workspace")
    assert f"pose-sync pull {RUN} --repair" in err


def test_diff_names_a_damaged_annotation_of_a_changed_sample(repo, cli):
    annotation = sorted((repo / MIRROR / RUN / "annotations").iterdir())[0]
    manifest = repo / MIRROR / RUN / "manifest.json"
    damaged = b'{"persons": 5}'
    damage(annotation, damaged)
    # diff reads the annotations of the samples whose files the manifest records differently.
    document = json.loads(manifest.read_text())
    for item in document["files"]:
        if item["path"].endswith(f"annotations/{annotation.name}"):
            item["sha256"], item["size"] = hashlib.sha256(damaged).hexdigest(), len(damaged)
    damage(manifest, json.dumps(document).encode())
    refused(cli("diff"), 6, f"annotations/{annotation.name} at workspace")


@pytest.mark.parametrize("data", [b'{"errors": ', b"\xff\xfe{", b"[1, 2]"])
def test_diff_names_a_damaged_validation_report_and_the_fix(repo, cli, data):
    damage(repo / "data" / "reports" / "validate" / WALK / "metrics.json", data)
    refused(cli("diff"), 6, f"{WALK}/metrics.json at workspace", "dvc repro")


def test_a_dvc_file_cut_short_is_named_by_pull_and_fetch_and_status_goes_on(repo, cli):
    dvc_file = repo / MIRROR / f"{RUN}.dvc"
    damage(dvc_file, half(dvc_file))  # md5 kept, path lost: DVC's own loader fails on it with a KeyError
    before = git(repo, "status", "--porcelain")
    for command in (["pull", RUN], ["fetch"], ["pull", RUN, "--repair"]):
        refused(cli(*command), 10, f"{RUN}.dvc", "does not record a folder", f"git checkout -- {RUN}.dvc")
    status = cli("status", "--json")
    assert status.code == 0 and "Traceback" not in status.err, status.err
    states = {b["batch_id"]: b for b in json.loads(status.out)["batches"]}
    assert states[RUN]["workspace"] == "damaged .dvc file" and states[RUN]["pushed"] is False
    assert (states[RUN]["state"], states[RUN]["next"]) == ("damaged-dvc-file", f"git checkout -- {MIRROR}/{RUN}.dvc")
    assert states[WALK]["workspace"] is None, "the other batch is still answered for"
    assert git(repo, "status", "--porcelain") == before, "nothing was changed"
    git(repo, "checkout", "--", str(dvc_file.relative_to(repo)))  # as the hint says
    assert cli("pull", RUN).code == 0


@pytest.mark.parametrize("data", [b"[]", b"5", b'"sealed"'])
def test_a_seal_that_is_valid_json_but_no_seal_is_ignored(repo, cli, data):
    seal = repo / "data" / "raw" / ".pose-sync" / "seals" / f"{RUN}.json"
    assert seal.is_file()
    damage(seal, data)
    status = cli("status")
    assert status.code == 0 and "Traceback" not in status.err, status.err
    assert cli("pull", RUN).code == 0
    assert cli("fetch").code == 0


def test_a_dvc_config_that_is_not_text_is_named_by_dvc(repo, cli):
    damage(repo / ".dvc" / "config", b"\x00\xff[core\x81")
    for command in (["fetch"], ["prune-bucket", "--dry-run"]):
        result = cli(*command)
        assert result.code != 0 and "Traceback" not in result.err and "config" in result.err, result.err


def test_a_gitignore_with_bytes_that_are_not_utf8_is_kept_as_it_is(repo, cli):
    gitignore = repo / MIRROR / ".gitignore"
    original = gitignore.read_bytes()
    damage(gitignore, b"# caf\xe9 (latin-1)\n" + original)
    result = cli("archive", RUN)
    assert result.code == 0 and "Traceback" not in result.err, result.err
    assert gitignore.read_bytes().startswith(b"# caf\xe9 (latin-1)\n"), "the line git reads as bytes is kept"
    assert f"/{RUN}".encode() not in gitignore.read_bytes()


def test_a_dotenv_that_is_not_utf8_is_named_without_showing_its_content(repo, cli):
    (repo / ".env").write_bytes(b"CLOUDFLARE_R2_SECRET_ACCESS_KEY=s3cr3t-value\nNOTE=caf\xe9\n")
    for command in (["status"], ["list"], ["config"]):
        err = refused(cli(*command), 2, ".env", "not UTF-8", "save it as UTF-8")
        assert "s3cr3t" not in err

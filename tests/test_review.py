"""`pose-sync diff`, `review` and `show` on real revisions of a repository, and the page in a real browser."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from headless import Browser, chromium
from helpers import building_once, copy_repository, copy_tree, dvc, git, publish_generated, quiet_cli
from pose_factory.core import contract
from pose_factory.dataset.pages import PLOTS

A, B = "2026-11-01_run-cycle", "2026-11-02_walk"
SHIFT_PX = 5.0
EPOCH = "1793520000"
ARTEFACTS = Path(os.environ.get("POSE_FACTORY_TEST_ARTEFACTS", Path(__file__).resolve().parent / "artefacts"))

pytestmark = pytest.mark.integration


def commit(repo, message: str) -> str:
    git(repo.root, "add", "-A")
    git(repo.root, "commit", "-q", "-m", message)
    return git(repo.root, "rev-parse", "HEAD").strip()


def reseal(batch: Path) -> None:
    manifest = json.loads((batch / "manifest.json").read_text())
    paths = sorted(p.relative_to(batch).as_posix() for p in batch.rglob("*")
                   if p.is_file() and p.name != "manifest.json")
    manifest["files"] = contract.file_entries(batch, paths)
    manifest["totals"]["bytes"] = sum(f["size"] for f in manifest["files"])
    (batch / "manifest.json").write_bytes(contract.dumps(manifest))


def move_keypoints(batch: Path, sample: str, shift: float = SHIFT_PX) -> None:
    """Re-render one sample with every labelled keypoint moved `shift` px to the right (as a pod fix would)."""
    from pose_factory.producer import figure

    annotation_file = batch / "annotations" / f"{sample}.json"
    annotation = json.loads(annotation_file.read_text())
    points = annotation["persons"][0]["keypoints_2d"]
    for point in points:
        if point[2] and point[0] + shift < 47:
            point[0] = round(point[0] + shift, 2)
        elif point[2]:
            point[:] = [0, 0, 0]  # would leave the canvas: now not labelled (a visibility flip)
    annotation_file.write_bytes(contract.dumps(annotation))
    import numpy as np

    kp = np.array(points, dtype=float)
    (batch / "openpose_json" / f"{sample}.json").write_bytes(contract.dumps(figure.openpose_json(kp, 48, 48)))
    from PIL import Image

    Image.fromarray(figure.draw_openpose(kp, 48, 48)).save(batch / "pose" / f"{sample}.png")


def validate_and_record(cli, repo, batch_id: str, place: str = "raw") -> None:
    result = cli("validate", repo.root / "data" / place / "pose-factory" / batch_id, "--report",
                 repo.root / "data" / "reports" / "validate" / batch_id, "-q")
    assert result.code == 0, result.err


@pytest.fixture(scope="module")
def history_template(tmp_path_factory):
    """Commits: c1 batch A; c2 batch B added; c3 A re-rendered with moved keypoints in one sample;
    c4 B archived; c5 A's conventions and software changed. Built once; each test gets a copy."""
    base = tmp_path_factory.mktemp("review-history")
    with building_once(base, pipeline=True) as (repo, env):
        cli = quiet_cli
        revs = {}
        env.setenv("SOURCE_DATE_EPOCH", EPOCH)
        pod_a = publish_generated(base / "a", cli, A, samples=4, seed=1)
        assert cli("pull", A, "-q").code == 0
        validate_and_record(cli, repo, A)
        revs["c1"] = commit(repo, "A")
        publish_generated(base / "b", cli, B, samples=2, seed=2, project="walk")
        assert cli("pull", B, "-q").code == 0
        validate_and_record(cli, repo, B)
        revs["c2"] = commit(repo, "B")
        move_keypoints(pod_a, "000001")
        reseal(pod_a)
        assert cli("publish", pod_a, "-q").code == 0
        assert cli("pull", A, "-q").code == 0
        validate_and_record(cli, repo, A)
        revs["c3"] = commit(repo, "A with one sample re-rendered")
        assert cli("archive", B).code == 0
        revs["c4"] = commit(repo, "archive B")
        manifest = json.loads((pod_a / "manifest.json").read_text())
        manifest["software"]["generator_version"] = "0.2.0"
        manifest["conventions"]["normal"]["background"] = [0, 0, 0]
        (pod_a / "manifest.json").write_bytes(contract.dumps(manifest))
        assert cli("publish", pod_a, "-q").code == 0
        assert cli("pull", A, "-q").code == 0
        revs["c5"] = commit(repo, "A conventions")
    return repo, revs, pod_a


@pytest.fixture
def history(history_template, tmp_path, monkeypatch):
    """A private copy of the history (repository, bucket and the pod's batch A), revisions by name."""
    template, revs, pod_a = history_template
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    repo = copy_repository(template, tmp_path / "project", monkeypatch)
    return repo, {**revs, "pod_a": copy_tree(pod_a, tmp_path / "a" / pod_a.name)}


def diff_json(cli, *revs: str) -> dict:
    result = cli("diff", *revs, "--json")
    assert result.code == 0, result.err
    document = json.loads(result.out)
    assert document["version"] == 1
    return document


def test_diffs_between_real_revisions(history, cli):
    repo, revs = history
    head_before = git(repo.root, "rev-parse", "HEAD")
    status_before = git(repo.root, "status", "--porcelain")

    added = diff_json(cli, revs["c1"], revs["c2"])
    assert [(b["batch_id"], b["status"]) for b in added["batches"]] == [(B, "added")]
    assert added["summary"]["samples_added"] == 2

    changed = diff_json(cli, revs["c2"], revs["c3"])
    [batch] = changed["batches"]
    assert batch["batch_id"] == A and batch["status"] == "changed"
    assert batch["samples"]["changed"] == ["000001"]
    assert batch["samples"]["modified"] == {"annotation": ["000001"], "openpose_json": ["000001"], "pose": ["000001"]}
    moved = {j["joint"]: j for j in batch["keypoints"]}
    assert any(j["mean_px"] == SHIFT_PX and j["max_px"] == SHIFT_PX for j in moved.values())
    assert all(j["max_px"] in (0.0, SHIFT_PX) for j in moved.values())
    flips = sum(j["visibility_flips"] for j in moved.values())
    assert flips == sum(1 for j in moved.values() if j["max_px"] == 0.0 and j["visibility_flips"])
    assert batch["validation"]["before"]["errors"] == 0 and batch["validation"]["after"]["errors"] == 0

    archived = diff_json(cli, revs["c3"], revs["c4"])
    assert [(b["batch_id"], b["status"]) for b in archived["batches"]] == [(B, "archived")]

    conventions = diff_json(cli, revs["c4"], revs["c5"])
    [batch] = conventions["batches"]
    fields = {c["field"]: c for c in batch["manifest_changes"]}
    assert fields["$.software.generator_version"]["after"] == "0.2.0"
    assert fields["$.conventions.normal.background"]["before"] == [128, 128, 255]
    assert batch["samples"]["changed"] == []

    text = cli("diff", revs["c2"], revs["c3"]).out
    assert f"changed  {A}: samples 4 -> 4, +0 -0 ~1" in text and "pose: 1 sample(s) modified" in text
    assert f"mean {SHIFT_PX:.1f} px, max {SHIFT_PX:.1f} px" in text

    # The same for a pull-request comment: Markdown tables of the joints and of the metrics before and after.
    markdown = cli("diff", revs["c2"], revs["c3"], "--format", "markdown")
    assert markdown.code == 0 and markdown.out.startswith("### Pose dataset diff:")
    assert f"#### `{A}`: changed" in markdown.out and "| joint | mean px | max px | visibility flips |" in markdown.out
    assert re.search(rf"\n\| \w+ \| {SHIFT_PX:.1f} \| {SHIFT_PX:.1f} \| 0 \|\n", markdown.out)
    assert f"Samples that moved most: `000001` ({SHIFT_PX:.1f} px" in markdown.out
    assert f"| before (`{revs['c2']}`) | 4 | " in markdown.out and f"| after (`{revs['c3']}`) | 4 | " in markdown.out

    # Reading old versions disturbed nothing.
    assert git(repo.root, "rev-parse", "HEAD") == head_before
    assert git(repo.root, "status", "--porcelain") == status_before


def test_diff_defaults_to_head_against_the_workspace(history, cli, tmp_path):
    repo, revs = history
    assert diff_json(cli)["batches"] == []
    assert cli("restore", B).code == 0
    [batch] = diff_json(cli)["batches"]
    assert (batch["batch_id"], batch["status"]) == (B, "restored")
    one_rev = diff_json(cli, revs["c1"])  # c1 against the workspace
    assert {b["batch_id"] for b in one_rev["batches"]} == {A, B}


def test_a_bad_revision_is_a_clear_error(history, cli):
    result = cli("diff", "no-such-rev")
    assert result.code == 2 and "'no-such-rev'" in result.err and "HEAD~1" in result.err


needs_chromium = pytest.mark.skipif(chromium() is None, reason="Chromium is not installed: `make test` installs it "
                                                              "on Debian (apt-get install chromium)")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One headless Chromium for the module's pages."""
    with Browser(tmp_path_factory.mktemp("chromium-profile")) as running:
        yield running


def offline(requests: list[str]) -> list[str]:
    """The requests that left the disk: anything but file:// and data: URLs."""
    return [url for url in requests if urlsplit(url).scheme not in ("file", "data")]


@needs_chromium
def test_the_network_check_sees_a_request(browser, tmp_path):
    """The offline check below can fail: a page that loads an image from a server is caught."""
    page = tmp_path / "online.html"
    page.write_text("<!doctype html><body><img src='http://127.0.0.1:9/x.png'>"
                    "<script>addEventListener('load',()=>document.body.setAttribute('data-images',1))</script>")
    assert offline(browser.load(page).requests) == ["http://127.0.0.1:9/x.png"]


def page_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@needs_chromium
def test_review_page_in_a_real_browser(history, cli, browser, tmp_path):
    repo, revs = history
    # In the workspace a second sample of A moves twice as far: it must come first on the page.
    move_keypoints(revs["pod_a"], "000002", shift=2 * SHIFT_PX)
    reseal(revs["pod_a"])
    assert cli("publish", revs["pod_a"], "-q").code == 0 and cli("pull", A, "-q").code == 0
    validate_and_record(cli, repo, A)
    result = cli("review", revs["c2"])  # c2 against the workspace, into the default folder
    assert result.code == 0, result.err
    out = repo.root / "data" / "reports" / "review"
    document = json.loads((out / "diff.json").read_text())
    assert document == diff_json(cli, revs["c2"])
    loaded = browser.load(out / "index.html", screenshot=ARTEFACTS / "review.png")
    dom = loaded.dom
    assert offline(loaded.requests) == [], "the page works offline: nothing but files beside it is loaded"
    assert re.search(r'data-broken-images="0"', dom) and int(re.search(r'data-images="(\d+)"', dom).group(1)) >= 12
    counts = dict(re.findall(r'data-count="([^"]+)">(\d+)<', dom))
    assert int(counts["samples-changed"]) == document["summary"]["samples_changed"] == 2
    for status, n in document["summary"]["batches"].items():
        assert int(counts[f"batches-{status}"]) == n

    # Changed samples, farthest move first; every thumbnail column labelled, before and after side by side.
    assert re.findall(r'<tr data-sample="(\d+)" data-moved-px="([\d.]+)"', dom) == [
        ("000002", f"{2 * SHIFT_PX}"), ("000001", f"{SHIFT_PX}")]
    columns = re.findall(r'<th colspan="2" data-column="(\w+)">', dom)
    assert columns == ["overlay", "rgb", "pose", "depth", "normal", "seg"]
    before, after = f"before ({revs['c2'][:12]})", "after (workspace)"
    assert dom.count(f'<th class="side">{before}</th><th class="side">{after}</th>') == len(columns)
    row = dom.split('data-sample="000001"', 1)[1].split("</tr>", 1)[0]
    assert re.search(r'alt="before pose".*alt="after pose"', row), "the changed pose map: before, then after"
    assert row.count("unchanged") == 4, "rgb, depth, normal and seg did not change: shown once"
    # The keypoint change: the old skeleton dashed under the new, and an arrow for each joint that moved.
    moved = {j["joint"] for j in document["batches"][0]["keypoints"] if j["max_px"] > 0}
    arrows = set(re.findall(r'<line class="moved" data-joint="(\w+)"', row))
    assert arrows and arrows <= moved and 'stroke-dasharray="4 3"' in row
    # The charts of the validate stage's plots, drawn in the page, with axis titles and both versions.
    charts = re.findall(r'<svg class="chart" data-chart="(\w+)"', dom)
    assert set(charts) == {"azimuth", "elevation", "visibility", "counts"}
    for title in ("camera azimuth (degrees)", "samples with the joint visible", "pose set"):
        assert f">{title}</text>" in dom
    assert f'data-series="{before}"' in dom and f'data-series="{after}"' in dom

    # Readable by anyone, as the thumbnails are; git does not see the folder.
    assert (out / "index.html").stat().st_mode & 0o777 == page_mode() == (out / "diff.json").stat().st_mode & 0o777
    assert "data/reports/review" not in git(repo.root, "status", "--porcelain", "--untracked-files=all")


@needs_chromium
def test_show_contact_sheet_in_a_real_browser(history, cli, browser, tmp_path):
    repo, _ = history
    out = repo.root / "sheet"  # a folder of the user's choosing, inside the repository
    result = cli("show", A, "--out", out, "--limit", "3")
    assert result.code == 0 and "3 of 4 samples shown" in result.out
    assert sorted(p.name for p in out.iterdir()) == [".gitignore", "index.html", "thumbs"], "no stray diff.json"
    assert git(repo.root, "status", "--porcelain", "--untracked-files=all") == "", "the page folder ignores itself"
    loaded = browser.load(out / "index.html", screenshot=ARTEFACTS / "contact-sheet.png")
    dom = loaded.dom
    assert offline(loaded.requests) == []
    assert re.search(r'data-broken-images="0"', dom) and 'data-count="samples">4<' in dom
    assert 'data-count="not-shown">1 more sample(s) not shown' in dom
    assert re.findall(r'<th data-column="(\w+)">', dom) == ["overlay", "rgb", "pose", "depth", "normal", "seg"]
    assert len(re.findall(r'<svg class="chart"', dom)) == 4 and ">camera elevation (degrees)</text>" in dom
    missing = cli("show", "2020-01-01_none", "--out", out)
    assert missing.code == 8 and "pose-sync status" in missing.err


def test_the_pages_draw_the_charts_dvc_plots_define(pipeline_repo, cli, tmp_path):
    """`dvc plots show --json` (real dvc) encodes each plot as the pages draw it: bars, the right axes."""
    repo = pipeline_repo
    publish_generated(tmp_path, cli, A, samples=2)
    assert cli("pull", A, "-q").code == 0
    validate_and_record(cli, repo, A)
    shown = json.loads(dvc(repo.root, "plots", "show", "--json").stdout)
    assert not shown.get("errors"), shown.get("errors")
    for plot in PLOTS:
        [entry] = shown["data"][f"data/reports/validate/{A}/{plot.file}"]
        content = entry["content"]
        x, y = content["encoding"]["x"], content["encoding"]["y"]
        assert content["mark"]["type"] == "bar" and content["title"] == plot.title, plot.file
        assert (x["field"], x["title"], y["field"], y["title"]) == (plot.x, plot.x_label, plot.y, plot.y_label)
        if plot.horizontal:  # one bar per category along y, its length a number along x
            assert (x["type"], y["type"]) == ("quantitative", "nominal"), plot.file
        else:  # one bar per angle, in numeric order
            assert (x["type"], y["type"]) == ("ordinal", "quantitative"), plot.file
            assert x["sort"]["field"] in {t.get("as") for t in content["transform"]}
        assert (x if plot.horizontal else y)["scale"]["zero"] is True, "bars start at zero"


def test_diff_reads_manifests_and_changed_annotations_only(history, cli, monkeypatch):
    repo, revs = history
    from pose_factory.dataset import diff as review

    reads: list[str] = []
    real = review.Version.read_bytes

    def recording(self, path):
        reads.append(path)
        return real(self, path)

    monkeypatch.setattr(review.Version, "read_bytes", recording)
    diff_json(cli, revs["c2"], revs["c3"])
    assert not [p for p in reads if p.endswith(".png")], "no image is read to compute a diff"
    annotations = sorted({p.rsplit("/", 1)[1] for p in reads if "/annotations/" in p})
    assert annotations == ["000001.json"]


def test_unreadable_data_at_a_revision_is_an_error_not_a_silent_unchanged(history, cli):
    repo, revs = history
    cache = repo.root / ".dvc" / "cache"
    moved = repo.root / "cache-elsewhere"
    cache.rename(moved)
    result = cli("diff", revs["c2"], revs["c3"])  # nothing was pushed: the remote cannot help either
    moved.rename(cache)
    assert result.code == 10 and "dvc fetch" in result.err, result.err

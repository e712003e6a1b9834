"""How a dataset diff is shown (the `pose-sync diff` lines, the Markdown for a pull request), from a diff made by
hand: no repository needed. test_review.py computes real diffs between real revisions."""

from __future__ import annotations

from pose_factory.dataset.diff import (
    BatchDiff,
    DatasetDiff,
    JointMovement,
    SampleMovement,
    markdown_summary,
    summary_lines,
)

A, B, C = "2026-11-01_run-cycle", "2026-11-02_walk", "2026-11-03_jump"
METRICS = {"samples": 4, "files": 28, "errors": 0, "warnings": 1}


def changed_batch(manifest_changes: int = 1) -> BatchDiff:
    return BatchDiff(
        A, "changed", samples_before=4, samples_after=5, samples_added=["000004"], changed_samples=["000001", "000002"],
        modified={"pose": ["000001", "000002"], "annotation": ["000001", "000002"]},
        manifest_changes=[{"field": f"$.software.note{i}", "before": "a|b", "after": "x" * 80}
                          for i in range(manifest_changes)],
        joints=[JointMovement("nose", 1.0, 2.0, 0), JointMovement("neck", 3.5, 7.25, 1),
                JointMovement("r_hip", 0.0, 0.0, 0)],
        metrics_before=METRICS, metrics_after={**METRICS, "samples": 5, "errors": 2},
        movement={"000001": SampleMovement("000001", 2.0, 1.0, 0, "nose"),
                  "000002": SampleMovement("000002", 7.25, 3.5, 1, "neck")})


def test_summary_lines_count_the_batches_and_show_what_moved():
    diff = DatasetDiff("abc123", "workspace", [changed_batch(), BatchDiff(B, "added", samples_after=2),
                                              BatchDiff(C, "archived"), BatchDiff("2026-10-01_old", "unchanged")])
    lines = summary_lines(diff)
    assert lines[0].startswith("dataset diff abc123 -> workspace:")
    assert "1 added" in lines[0] and "1 archived" in lines[0] and "1 changed" in lines[0]
    assert "(1 unchanged)" in lines[0]
    assert f"  changed  {A}: samples 4 -> 5, +1 -0 ~2" in lines
    assert f"  added    {B}: 2 samples" in lines and f"  archived {C}" in lines
    keypoints = [line.split(":")[0].strip() for line in lines if line.strip().startswith("keypoint ")]
    assert keypoints == ["keypoint neck", "keypoint nose"], "farthest first; a joint that did not move is left out"
    assert any(line.strip().startswith("validation:") and "errors 0 -> 2" in line for line in lines)
    assert all("2026-10-01_old" not in line for line in lines)


def test_markdown_tables_escape_cells_and_list_the_farthest_sample_first():
    text = markdown_summary(DatasetDiff("abc123", "def456", [changed_batch(manifest_changes=3)]), max_rows=2)
    lines = text.splitlines()
    assert lines[0] == "### Pose dataset diff: `abc123` → `def456`"
    assert f"#### `{A}`: changed" in lines
    joints = lines.index("| joint | mean px | max px | visibility flips |")
    assert lines[joints + 1] == "| --- | ---: | ---: | ---: |"
    assert lines[joints + 2:joints + 4] == ["| neck | 3.5 | 7.2 | 1 |", "| nose | 1.0 | 2.0 | 0 |"]
    moved = next(line for line in lines if line.startswith("Samples that moved most:"))
    assert moved.index("`000002`") < moved.index("`000001`")
    fields = [line for line in lines if line.startswith("| `$.software.note")]
    assert len(fields) == 2, "max_rows manifest fields, then how many more"
    assert "| a\\|b |" in fields[0], "a | inside a cell is escaped"
    assert fields[0].endswith("x" * 54 + "... |"), "a long value is cut to 60 characters"
    assert "... and 1 more field(s)." in lines
    assert "| before (`abc123`) | 4 | 28 | 0 | 1 |" in lines and "| after (`def456`) | 5 | 28 | 2 | 1 |" in lines


def test_markdown_of_no_change_is_one_line():
    text = markdown_summary(DatasetDiff("HEAD", "workspace", [BatchDiff(A, "unchanged")]))
    assert text.splitlines()[2] == "No batch changed (1 unchanged)."
    assert "|" not in text

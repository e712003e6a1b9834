"""One home for each helper: the .dvc-file reader, the batch statistics, the settings defaults and the names of
the environment variables, each defined once and the other places derived from it or held equal to it."""

from __future__ import annotations

from pathlib import Path

from pose_factory.dataset import dvcrepo

REPO = Path(__file__).resolve().parents[1]


def test_the_dvc_file_reader_gives_the_recorded_folder_or_none(tmp_path):
    good = tmp_path / "b.dvc"
    good.write_text("outs:\n- md5: 0123456789abcdef0123456789abcdef.dir\n  size: 10\n  nfiles: 2\n  path: b\n")
    assert dvcrepo.recorded_out(good) == {"md5": "0123456789abcdef0123456789abcdef.dir", "size": 10, "nfiles": 2,
                                         "path": "b"}
    for text in ("outs: []\n", "not: [a, dvc file\n", "outs:\n- path: b\n", "\x00\x01"):
        good.write_text(text)
        assert dvcrepo.recorded_out(good) is None, text
    assert dvcrepo.recorded_out(tmp_path / "missing.dvc") is None

"""core/fsutil: the file-system helpers every side uses."""

from __future__ import annotations

import os
import stat

import pytest

from pose_factory.bucket.backends import LocalFolderStorage
from pose_factory.core.fsutil import atomic_write_path


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_writes_get_the_mode_a_plain_open_would_give(tmp_path, umask):
    previous = os.umask(umask)
    try:
        with atomic_write_path(tmp_path / "report.json") as tmp:
            tmp.write_text("{}")
        with open(tmp_path / "plain.json", "w") as handle:
            handle.write("{}")
        storage = LocalFolderStorage(tmp_path / "bucket", "b")
        storage.put_bytes("batches/x/manifest.json", b"{}")
    finally:
        os.umask(previous)
    expected = stat.S_IMODE((tmp_path / "plain.json").stat().st_mode)
    assert expected == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == expected
    assert stat.S_IMODE((tmp_path / "bucket" / "batches" / "x" / "manifest.json").stat().st_mode) == expected
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []

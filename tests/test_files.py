import os
import stat

import pytest

from mlns_fast.files import atomic_path, atomic_write


def test_atomic_write_replaces_whole_and_leaves_no_temp(tmp_path):
    p = tmp_path / "a.json"
    atomic_write(p, "old")
    atomic_write(p, b"new")
    assert p.read_text() == "new" and [q.name for q in tmp_path.iterdir()] == ["a.json"]


def test_atomic_files_get_the_mode_of_a_plain_open(tmp_path):
    """mkstemp used to leave 0600 files beside 0644 PNGs."""
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.txt", "x")
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "a.txt").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == 0o644


def test_failed_write_keeps_the_old_file(tmp_path):
    p = tmp_path / "model.onnx"
    p.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("exporter crashed")
    assert p.read_text() == "old" and len(list(tmp_path.iterdir())) == 1

"""``write_text_atomically``: the previous file survives a failed write, nothing partial
is left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtl_lightning.shared.files import write_text_atomically


def test_writes_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "metrics.json"
    write_text_atomically(path, "one")
    write_text_atomically(path, "two")
    assert path.read_text() == "two"
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]


def test_a_failed_write_keeps_the_previous_file(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "metrics.json"
    write_text_atomically(path, "previous")

    def full_disk(self: Path, text: str) -> int:
        Path.open(self, "w").write(text[:3])  # half written, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError):
        write_text_atomically(path, "new content")
    monkeypatch.undo()
    assert path.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]

"""Retention of the daemon's recordings (``record.keep_mb``, ``record.keep_days``): which
files are the recorder's own, and which of them go, on real files (no sockets)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from streamfuse.config import ConfigError, load
from streamfuse.record.writer import Retention, _retention, apply_retention, own_recordings

DAY = 86400.0


def test_oldest_go_first_until_the_rest_fit_and_none_is_too_old() -> None:
    files = [(Path(f"rec-{i:04d}.mcap"), 100, 1000.0 + i) for i in range(6)]  # 600 bytes
    assert Retention(max_bytes=0, max_age_s=0).victims(files, 2000.0) == []
    by_size = Retention(max_bytes=250, max_age_s=0).victims(files, 2000.0)
    assert by_size == [(Path(f"rec-{i:04d}.mcap"), "size") for i in range(4)]
    # files 0-2 are over 997 s old; then the size limit takes file 3 as well
    both = Retention(max_bytes=250, max_age_s=997.5).victims(files[::-1], 2000.0)
    assert both == [(Path(f"rec-{i:04d}.mcap"), "age") for i in range(3)] + \
        [(Path("rec-0003.mcap"), "size")]
    # a limit already met removes nothing, even with an old file newer than a young one's mtime
    assert Retention(max_bytes=600, max_age_s=DAY).victims(files, 2000.0) == []


def test_same_mtime_goes_by_name_so_the_lower_number_goes_first() -> None:
    files = [(Path("rec-0001.mcap"), 10, 5.0), (Path("rec-0000.mcap"), 10, 5.0)]
    assert Retention(max_bytes=10, max_age_s=0).victims(files, 6.0) == \
        [(Path("rec-0000.mcap"), "size")]


def test_only_the_recorders_own_names_count(tmp_path: Path) -> None:
    d = tmp_path / "recordings"
    d.mkdir()
    own = ["rec-0000.mcap", "rec-20261203T101500Z-0000.mcap", "rec-20261203T101500Z-12345.mcap"]
    other = ["notes.mcap", "rec-foo-0000.mcap", "day1-0000.mcap", "rec-0000.mcap.tmp"]
    for name in own + other:
        (d / name).write_bytes(b"x")
    (d / "rec-20261203T101500Z-0009.mcap").symlink_to(d / "notes.mcap")
    (d / "rec-20261203T101500Z-0010.mcap").mkdir()
    assert sorted(p.name for p in own_recordings(d)) == sorted(own)
    # a file named with .mcap: its numbered parts only
    assert [p.name for p in own_recordings(d / "day1.mcap")] == ["day1-0000.mcap"]
    assert own_recordings(tmp_path / "missing") == []


def test_apply_removes_old_files_never_the_current_one_nor_others(tmp_path: Path) -> None:
    now = time.time()
    names = [f"rec-20200101T000000Z-{i:04d}.mcap" for i in range(4)]
    for i, name in enumerate(names):
        (tmp_path / name).write_bytes(b"x" * 1000)
        os.utime(tmp_path / name, (now - 3 * DAY + i, now - 3 * DAY + i))
    (tmp_path / "notes.mcap").write_bytes(b"x")
    os.utime(tmp_path / "notes.mcap", (now - 9 * DAY, now - 9 * DAY))
    current = tmp_path / names[0]  # the oldest, but being written: kept
    removed = apply_retention(tmp_path, current, Retention(max_bytes=0, max_age_s=DAY))
    assert removed == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.mcap", names[0]]


@pytest.mark.parametrize(("toml", "error"), [
    ("[record]\nkeep_mb = 100\nmax_size_mb = 64\n",
     "record.keep_mb: expected 0 or at least twice record.max_size_mb (128)"),
    ("[record]\nkeep_mb = -1\n", "record.keep_mb: expected a number >= 0"),
    ("[record]\nkeep_days = -0.5\n", "record.keep_days: expected a number >= 0"),
])
def test_bad_retention_settings_name_their_key(tmp_path: Path, toml: str, error: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=error.replace("(", r"\(").replace(")", r"\)")):
        load(path, environ={})
    path.write_text("[record]\nkeep_mb = 128\nmax_size_mb = 64\nkeep_days = 30\n")
    assert load(path, environ={}).record.keep_mb == 128


def test_only_the_daemons_recorder_applies_it(tmp_path: Path) -> None:
    """``streamfuse record --out`` elsewhere (a session, a test set) never removes files."""
    path = tmp_path / "c.toml"
    path.write_text(f'[record]\npath = "{tmp_path / "rec"}"\nmax_size_mb = 64\nkeep_mb = 1000\n'
                    'keep_days = 2\n')
    cfg = load(path, environ={})
    assert _retention(cfg, str(tmp_path / "rec")) == \
        Retention(max_bytes=(1000 - 64) * 1024 * 1024, max_age_s=2 * DAY)
    assert _retention(cfg, str(tmp_path / "rec" / ".." / "rec")) is not None
    assert _retention(cfg, str(tmp_path / "session.mcap")) is None
    path.write_text(f'[record]\npath = "{tmp_path / "rec"}"\n')
    assert _retention(load(path, environ={}), str(tmp_path / "rec")) is None

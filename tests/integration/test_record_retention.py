"""Retention of the daemon's recordings, on a real recorder process behind a real broker: it
rotates through many small files and keeps only the newest within ``record.keep_mb``, removes
an earlier run's files older than ``record.keep_days``, and leaves every other file alone."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import zmq

from streamfuse.record import reader
from streamfuse.record.writer import own_recordings
from tests.helpers.bus import Probe
from tests.helpers.proc import stop, streamfuse, wait_for
from tests.integration.test_record_roundtrip import synthetic

MIB = 1024 * 1024


def _last_recorded(folder: Path) -> int:
    """The newest ``t_ns`` in this run's files (0 while none is readable)."""
    ours = [p for p in own_recordings(folder) if not p.name.startswith("rec-2020")]
    try:
        return max((ts for _t, ts, _p in reader.read_raw(ours)), default=0)
    except (reader.RecordingError, OSError):
        return 0  # a file removed or being started while read: try again


@pytest.mark.slow
def test_recorder_keeps_the_newest_files_within_keep_mb_and_keep_days(broker,
                                                                      tmp_path: Path) -> None:
    folder = tmp_path / "recordings"
    folder.mkdir()
    old = time.time() - 2 * 86400
    earlier = [folder / f"rec-20200101T000000Z-{i:04d}.mcap" for i in range(2)]
    for p in [*earlier, folder / "notes.mcap"]:
        p.write_bytes(b"x" * 1000)
        os.utime(p, (old, old))
    (folder / "rec-20200101T000000Z-0002.mcap").symlink_to(folder / "notes.mcap")
    broker.write(f'[record]\npath = "{folder}"\nmax_size_mb = 0.1\nkeep_mb = 0.3\n'
                 'keep_days = 1\nchunk_kb = 16\n')
    msgs = synthetic(300)  # ~3 MB of incompressible frames: about 30 files of 0.1 MB
    with zmq.Context() as ctx, open(tmp_path / "record.log", "w") as log:
        probe = Probe(ctx, broker.cfg.bus)
        rec = streamfuse(["record", "--out", str(folder), "--config", str(broker.path)],
                         stderr=log)
        try:
            probe.wait_subscribers(b"")
            probe.publish(msgs)
            last = max(m.t_ns for m in msgs)
            wait_for(lambda: _last_recorded(folder) == last, timeout=30,
                     what="the last message on disk")
        finally:
            assert stop(rec) == 0
            probe.close()
    text = (tmp_path / "record.log").read_text()
    kept = own_recordings(folder)
    names = {p.name for p in folder.iterdir()}
    # the earlier run's files went for their age; other files and links stayed
    assert not names & {p.name for p in earlier}, text[-3000:]
    assert {"notes.mcap", "rec-20200101T000000Z-0002.mcap"} <= names
    assert text.count(", age)") == 2, text[-3000:]
    # most files went for the size; what is left fits keep_mb (a 16 KiB chunk of slack)
    assert text.count(", size)") >= 10, text[-3000:]
    assert sum(p.stat().st_size for p in kept) <= 0.3 * MIB + 16 * 1024
    # ... and it is the newest part of the recording: the last messages published, whole
    got = [ts for _t, ts, _p in reader.read_raw(kept)]
    assert 0 < len(got) < len(msgs)
    assert sorted(got) == sorted(m.t_ns for m in msgs[len(msgs) - len(got):])

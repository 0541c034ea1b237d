"""`streamfuse demo --small` runs to completion: data, model, daemon, replay, summary."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers.media import espeak_missing
from tests.helpers.proc import run_streamfuse

# one line per live classification: time, source, label, score, modalities, latency, mark
# (mark: "ok", "(was LABEL)", or nothing for a window no label covers by more than half)
LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3}  room\d\s+[a-z]+\s+[01]\.\d\d  [a-z+-]+\s+-?\d+\.\d ms  (.*)$")


@pytest.mark.slow
def test_demo_small_builds_trains_and_reports_what_it_printed(tmp_path: Path) -> None:
    """A fresh cache (about 35 s on 2 cores with --small: 7 s data, 10 s training, the
    rest replay); the summary agrees line for line with the classifications printed."""
    if espeak_missing():
        pytest.fail(espeak_missing())  # espeak-ng is part of the set-up (scripts/setup.sh)
    cache = tmp_path / "cache"
    r = run_streamfuse(["demo", "--small", "--cache", str(cache)], timeout=280)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    out = r.stdout
    assert f"demo: cache {cache}" in out
    assert "demo: building avdigits, 60 segments: done" in out, out  # nothing to reuse
    assert "demo: training a model, 4 epochs: done" in out, out
    marks = [m.group(1).strip() for m in map(LINE.match, out.splitlines()) if m]
    m = re.search(r"^demo: accuracy (\d+\.\d)% on (\d+) labelled windows \((\d+) classifications\)$",
                  out, re.M)
    assert m, out
    accuracy, labelled, classifications = m.group(1), int(m.group(2)), int(m.group(3))
    assert len(marks) == classifications, out  # every classification printed, once
    judged = [k for k in marks if k]
    assert all(k == "ok" or re.fullmatch(r"\(was [a-z]+\)", k) for k in judged), judged
    assert len(judged) == labelled >= 5, out
    assert f"{accuracy}%" == f"{judged.count('ok') / labelled:.1%}", out
    assert re.search(r"demo: latency_ms.total\s+p50\s+-?\d+\.\d\d\s+p99\s+-?\d+\.\d\d", out), out

"""`streamfuse demo --small` runs to completion: data, model, daemon, replay, summary."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers.media import espeak_missing
from tests.helpers.proc import run_streamfuse

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "demo-test"  # kept between runs (git-ignored): later runs reuse data and model


@pytest.mark.slow
def test_demo_small_runs_to_completion() -> None:
    if espeak_missing():
        pytest.fail(espeak_missing())  # espeak-ng is part of the set-up (scripts/setup.sh)
    r = run_streamfuse(["demo", "--small", "--cache", str(CACHE)], timeout=280)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    out = r.stdout
    assert f"demo: cache {CACHE}" in out
    # one line per live classification: time, source, label, score, modalities, latency
    lines = [ln for ln in out.splitlines()
             if re.match(r"^\d\d:\d\d:\d\d\.\d{3}  room\d\s+[a-z]+\s+[01]\.\d\d  [a-z+-]+\s+-?\d+\.\d ms", ln)]
    assert len(lines) >= 5, out
    m = re.search(r"demo: accuracy (\d+\.\d)% on (\d+) labelled windows", out)
    assert m and int(m.group(2)) >= 5, out
    assert re.search(r"demo: latency_ms.total\s+p50\s+-?\d+\.\d\d\s+p99\s+-?\d+\.\d\d", out), out
    # a second run reuses the cache
    assert "reusing model" in out or "training a model" in out

"""End to end, no hand-written CSV: label a replay live, record it, train from the recording.

A small avdigits set is built (its recordings carry a label stream, which the replay
leaves out). `streamfuse run` records the bus while `streamfuse replay` publishes the
train split's video, audio and text, and this test, watching the replayed audio on the
bus, runs `streamfuse label` as each segment begins (the open-ended form "from now on
room1 shows L"; the last segment as a span with --for) with the segment's start as
--at, as the console does with a key's press time. `streamfuse train` on the daemon's
recording with no --labels must then learn what `streamfuse train --labels labels.csv`
learns from the original files: the test split's accuracy within 1 point.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import zmq

from streamfuse.datasets import avdigits
from streamfuse.wire import codec, topics
from streamfuse.wire.sockets import connect_sub
from tests.conftest import BusEnv
from tests.helpers.proc import PYTHON, run_streamfuse, streamfuse
from tests.integration.daemon_fixtures import Daemon

pytestmark = pytest.mark.slow

SEGMENTS = 40
EPOCHS = 6
RATE = 4.0


class Labeller:
    """Runs `streamfuse label` for each labels.csv row once the replay reaches its start."""

    def __init__(self, ctx: zmq.Context, env: BusEnv, rows: list[dict[str, str]]) -> None:
        self.env = env
        self.rows = rows
        source = rows[0]["source"]
        self.sub = connect_sub(
            ctx, env.cfg.bus, [topics.topic(source, "audio"), topics.topic(source, "video")]
        )
        self.procs: list[subprocess.Popen] = []
        self.done = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="labeller")
        self.thread.start()

    def _label(self, *args: str) -> None:
        argv = [PYTHON, "-m", "streamfuse", "label", *args, "--config", str(self.env.path)]
        self.procs.append(
            subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )

    def _run(self) -> None:
        i, newest = 0, 0
        while i < len(self.rows) and not self.stop.is_set():
            if self.sub.poll(100):
                newest = max(newest, codec.decode(self.sub.recv_multipart()).t_ns)
            while i < len(self.rows) and newest >= int(self.rows[i]["start"]):
                r = self.rows[i]
                if i == len(self.rows) - 1:  # the last one as a span: nothing follows to end it
                    seconds = (int(r["end"]) - int(r["start"])) / 1e9
                    self._label(r["source"], r["label"], "--at", r["start"], "--for", str(seconds))
                else:
                    assert (
                        r["end"] == self.rows[i + 1]["start"]
                    )  # contiguous: the next label ends it
                    self._label(r["source"], r["label"], "--at", r["start"])
                i += 1
        self.done.set()

    def close(self) -> list[tuple[int, str]]:
        self.stop.set()
        self.thread.join(30)
        self.sub.close()
        return [(p.wait(60), p.stderr.read() if p.stderr else "") for p in self.procs]


def _train(args: list[str], out: Path) -> None:
    r = run_streamfuse(
        [
            "train",
            *args,
            "--out",
            str(out),
            "--epochs",
            str(EPOCHS),
            "--seed",
            "0",
            "--batch-size",
            "32",
            "--quiet",
        ],
        timeout=600,
        env={"OMP_NUM_THREADS": "1", "STREAMFUSE_LOG": "WARNING"},
    )
    assert r.returncode == 0, r.stderr[-3000:]


def _test_accuracy(model: Path, test: Path, report: Path) -> float:
    r = run_streamfuse(
        ["eval", "--model", str(model), "--recordings", str(test), "--report", str(report)],
        timeout=600,
        env={"OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return float(json.loads((report / "report.json").read_text())["accuracy"])


def test_labels_sent_live_train_the_same_model_as_the_csv(bus_env: BusEnv, tmp_path: Path):
    data = tmp_path / "avdigits"
    avdigits.build(data, avdigits.Params(segments=SEGMENTS, seed=11))
    rows = list(csv.DictReader((data / "train" / "labels.csv").open()))
    source = rows[0]["source"]
    assert {r["source"] for r in rows} == {source}  # one file, one source
    daemon = Daemon(bus_env, "[record]\nenabled = true\n")
    ctx = zmq.Context()
    labeller = None
    try:
        daemon.wait_ready(120)
        labeller = Labeller(ctx, bus_env, rows)
        replay = streamfuse(
            [
                "replay",
                str(data / "train"),
                "--rate",
                str(RATE),
                "--topics",
                *(topics.topic(source, s) for s in ("video", "audio", "text")),
                "--config",
                str(bus_env.path),
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        _, err = replay.communicate(timeout=300)
        assert replay.returncode == 0, err
        assert labeller.done.wait(30), "the replay ended before every segment began"
        results = labeller.close()
        labeller = None
        assert len(results) == len(rows)
        assert all(code == 0 for code, _ in results), results
    finally:
        if labeller is not None:
            labeller.close()
        ctx.term()
        assert daemon.close() == 0
    recorded = bus_env.root / "recordings"
    assert list(recorded.glob("*.mcap"))
    _train(["--recordings", str(recorded)], tmp_path / "from_stream")
    _train(
        ["--recordings", str(data / "train"), "--labels", str(data / "train" / "labels.csv")],
        tmp_path / "from_csv",
    )
    ours = json.loads((tmp_path / "from_stream" / "manifest.json").read_text())
    theirs = json.loads((tmp_path / "from_csv" / "manifest.json").read_text())
    assert ours["training"]["train"]["label_files"] == ["<label messages>"]
    assert ours["training"]["train"]["labelled"] == theirs["training"]["train"]["labelled"]
    # Same windows, same labels, same seed: the very same weights.
    assert ours["model_id"] == theirs["model_id"]
    acc_stream = _test_accuracy(tmp_path / "from_stream", data / "test", tmp_path / "r1")
    acc_csv = _test_accuracy(tmp_path / "from_csv", data / "test", tmp_path / "r2")
    assert abs(acc_stream - acc_csv) <= 0.01, (acc_stream, acc_csv)


def test_a_csv_that_disagrees_with_the_label_stream_is_refused(tmp_path: Path):
    data = tmp_path / "avdigits"
    avdigits.build(data, avdigits.Params(segments=12, seed=3, split="test"))
    rows = (data / "test" / "labels.csv").read_text().splitlines()
    first = rows[1].split(",")
    wrong = "one" if first[3] != "one" else "two"
    bad = tmp_path / "labels.csv"
    bad.write_text("\n".join([rows[0], ",".join([*first[:3], wrong]), *rows[2:]]) + "\n")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamfuse",
            "train",
            "--recordings",
            str(data / "test"),
            "--labels",
            str(bad),
            "--out",
            str(tmp_path / "m"),
            "--epochs",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"labels.csv:2: {first[0]} [{first[1]}, {first[2]})" in r.stderr
    assert repr(wrong) in r.stderr and repr(first[3]) in r.stderr
    assert not (tmp_path / "m").exists()

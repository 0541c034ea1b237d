"""``streamfuse tail``, ``devices`` and capture usage errors, as real processes."""

from __future__ import annotations

import json
import subprocess
import time

import numpy as np
import zmq

from streamfuse.wire import codec
from streamfuse.wire.sockets import connect_pub
from tests.helpers.proc import run_streamfuse, stop, streamfuse, wait_for

T = 1_790_000_000_000_000_000  # a plausible capture time (decoders refuse 1970)


def _publish_until_exit(broker, proc: subprocess.Popen, build) -> None:
    """Publish ``build(i)`` messages (~200/s) until ``proc`` exits (bounded by wait_for)."""
    with zmq.Context() as ctx:
        pub = connect_pub(ctx, broker.cfg.bus)
        try:
            i = 0

            def step() -> bool:
                nonlocal i
                for _ in range(4):
                    pub.send_multipart(codec.encode(build(i)), copy=False)
                    i += 1
                return proc.poll() is not None

            wait_for(step, timeout=30, interval=0.02, what="tail to exit")
        finally:
            pub.close()


def test_tail_prints_rate_gaps_and_latency_per_topic(broker) -> None:
    proc = streamfuse(["tail", "--topic", "room1/", "--duration", "3", "--config", str(broker.path)],
                      stdout=subprocess.PIPE, text=True)
    block = np.zeros((320, 1), np.float32)
    try:
        # every 10th block is "lost": seq jumps by 2
        _publish_until_exit(broker, proc, lambda i: codec.audio_message(
            "room1", i + i // 10, time.time_ns(), block, 16000))
    finally:
        assert stop(proc) == 0
    lines = [ln for ln in proc.stdout.read().splitlines() if ln.startswith("room1/audio")]
    assert lines, "no statistics printed"
    fields = lines[-1].split()
    rate = float(fields[1])
    gaps = int(fields[fields.index("gaps") + 1])
    assert rate > 10 and gaps > 0, lines[-1]
    assert "latency p50" in lines[-1] and "ms max" in lines[-1]


def test_tail_classes_prints_each_classification_as_a_json_line(broker) -> None:
    proc = streamfuse(["tail", "--classes", "--count", "3", "--config", str(broker.path)],
                      stdout=subprocess.PIPE, text=True)

    def classification(i: int):
        if i % 2:  # other traffic on the bus is ignored
            return codec.text_message("room1", i, T + 1, "not a class")
        payload = json.dumps({"source": "room1", "label": "seven", "i": i, "scores": {"seven": 0.9}})
        return codec.class_message("room1", i, T, T + 1000 + i, "seven", 0.9, payload.encode())

    try:
        _publish_until_exit(broker, proc, classification)
        assert proc.wait(5) == 0
    finally:
        stop(proc)
    lines = proc.stdout.read().splitlines()
    assert len(lines) == 3
    objs = [json.loads(ln) for ln in lines]
    assert all(o["label"] == "seven" and o["source"] == "room1" for o in objs)
    idx = [o["i"] for o in objs]
    assert idx == sorted(idx) and all(i % 2 == 0 for i in idx)


def test_tail_reads_the_results_endpoint_by_default(broker) -> None:
    """No --topic: rates of what bus.results carries; the text on the bus is not there."""
    proc = streamfuse(["tail", "--duration", "3", "--config", str(broker.path)],
                      stdout=subprocess.PIPE, text=True)

    def class_or_text(i: int):
        if i % 2:
            return codec.text_message("room1", i, time.time_ns(), "not a class")
        return codec.class_message("room1", i, 0, time.time_ns(), "seven", 0.9, b"{}")

    try:
        _publish_until_exit(broker, proc, class_or_text)
    finally:
        assert stop(proc) == 0
    lines = proc.stdout.read().splitlines()
    assert any(ln.startswith("class/room1 ") for ln in lines), lines
    assert all(ln.startswith("class/room1 ") for ln in lines), lines


def test_devices_lists_or_says_there_are_none() -> None:
    r = run_streamfuse(["devices"], env={"PULSE_SERVER": "unix:/nonexistent"})
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "cameras:" in out and "audio inputs:" in out
    assert "no cameras found" in out or "/dev/video" in out
    assert "no audio input devices found" in out or "ch," in out


def test_capture_usage_errors_are_one_line_exit_2(bus_env) -> None:
    bus_env.write('[[sources]]\nname = "room1"\n[sources.text]\ninput = "zmq"\n')
    r = run_streamfuse(["capture", "video", "--source", "room1", "--config", str(bus_env.path)])
    assert r.returncode == 2 and "source 'room1' has no [sources.video]" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run_streamfuse(["capture", "text", "--source", "nope", "--config", str(bus_env.path)])
    assert r.returncode == 2 and "no source named 'nope'" in r.stderr

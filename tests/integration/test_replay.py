"""``streamfuse replay`` as a real process into a real broker: pacing, --max
without loss, filters, bad input."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from streamfuse import clock
from streamfuse.clock import NS_PER_MS as MS
from streamfuse.frameplane.inline import Inliner
from streamfuse.record.writer import RecordingWriter
from streamfuse.stats import percentile
from streamfuse.wire import codec
from streamfuse.wire.schema import Message
from streamfuse.wire.sockets import connect_sub
from tests.helpers.bus import Probe, replaying
from tests.helpers.proc import run_streamfuse, stop, streamfuse
from tests.integration.test_record_roundtrip import synthetic

T0 = 1_700_000_000_000_000_000


def irregular(duration_s: float = 3.0) -> list[Message]:
    """30 fps video, 50 Hz audio and text at irregular instants, like a live capture."""
    rng = np.random.default_rng(1)
    msgs: list[Message] = []
    end = T0 + int(duration_s * 1e9)
    t, i = T0, 0
    while t < end:
        msgs.append(codec.frame_message("room1", i, t + int(rng.integers(0, 2 * MS)),
                                        np.full((48, 64, 3), i % 256, np.uint8)))
        t += 33_333_333
        i += 1
    for j, t in enumerate(range(T0, end, 20 * MS)):
        msgs.append(codec.audio_message("room1", j, t, np.zeros((320, 1), np.float32), 16000))
    for k, t in enumerate(sorted(rng.integers(T0, end, 12))):
        msgs.append(codec.text_message("room1", k, int(t), f"word {k}"))
    return sorted(msgs, key=lambda m: m.t_ns)


def record(path: Path, msgs: list[Message], chunk_size: int = 4 * 1024 * 1024) -> Path:
    with RecordingWriter(path, chunk_size=chunk_size) as w:
        for m in msgs:
            w.write_message(m)
    return path


def receive_replay(bus_env, args: list[str], n: int, *, sub_hwm: int | None = None,
                   per_message_s: float = 0.0, logs: list[str] | None = None) -> list[tuple[int, list[bytes]]]:
    """Run ``streamfuse replay ARGS`` and receive up to ``n`` messages with their arrival time.

    A paced replay sends frames by reference (the frame plane): they are copied out on
    arrival, so what is compared is what any subscriber off this host would receive."""
    got: list[tuple[int, list[bytes]]] = []
    inliner = Inliner()
    with replaying(bus_env, args, "room1/", hwm=sub_hwm) as (sub, proc):
        while len(got) < n:
            if not sub.poll(100):
                # Replay has exited (its socket flushed on close): what did not come
                # within a moment after that is not coming.
                if proc.poll() is not None and not sub.poll(1000):
                    break
                continue
            parts = inliner.parts(sub.recv_multipart())
            assert parts is not None, "a frame was overwritten before it was read"
            got.append((clock.now_ns(), [bytes(p) for p in parts]))
            if per_message_s:
                busy_until = clock.perf_ns() + int(per_message_s * 1e9)
                while clock.perf_ns() < busy_until:
                    pass
        log = proc.communicate(timeout=30)[1]
        assert proc.returncode == 0, log
        if logs is not None:
            logs.append(log)
    return got


def scheduler_jitter_p99_ms(n: int = 100) -> float:
    """p99 of how late a plain 5 ms sleep wakes up, measured now."""
    late = []
    for _ in range(n):
        t = clock.perf_ns()
        time.sleep(0.005)
        late.append(clock.perf_ns() - t - 5 * MS)
    return percentile(late, 99) / MS


@pytest.mark.slow
@pytest.mark.parametrize("rate", [1.0, 4.0])
def test_replay_reproduces_recorded_timing(broker, tmp_path: Path, rate: float) -> None:
    msgs = irregular(3.0)
    path = record(tmp_path / "r.mcap", msgs)
    recorded = np.array([m.t_ns for m in msgs], dtype=np.int64)
    ideal = (recorded - recorded[0]) / rate
    results = []
    # At most two tries: one stall of the shared machine (another job hogging both cores
    # for 50 ms) delays every message queued behind it and ruins the p99 of that run.
    for _attempt in range(2):
        got = receive_replay(broker, [str(path), "--rate", str(rate)], len(msgs))
        assert [p for _t, p in got] == [[bytes(x) for x in codec.encode(m)] for m in msgs]
        arrival = np.array([t for t, _p in got], dtype=np.int64)
        err = (arrival - arrival[0]) - ideal
        err -= np.median(err)  # a constant delivery latency is not a timing error
        p99_ms = percentile(np.abs(err), 99) / MS
        took, want = arrival[-1] - arrival[0], ideal[-1]
        jitter_ms = scheduler_jitter_p99_ms()
        # The 5 ms, plus what this machine's scheduler adds right now to the three
        # wake-ups per message (replay, broker, this receiver): ~0.1 ms each on a quiet
        # machine, several ms when other jobs load both cores.
        allowed_ms = 5.0 + 3 * jitter_ms
        print(f"rate {rate}: p99 timing error {p99_ms:.2f} ms (bare sleep p99 overshoot {jitter_ms:.2f} ms, "
              f"allowed {allowed_ms:.2f} ms), took {took / 1e9:.3f} s for {want / 1e9:.3f} s")
        ok = p99_ms <= allowed_ms if rate == 1.0 else abs(took - want) <= 0.05 * want
        results.append((p99_ms, allowed_ms, took / 1e9, want / 1e9))
        if ok:
            break
    assert ok, results


@pytest.mark.slow
def test_replay_max_into_a_slow_subscriber_loses_nothing(broker, tmp_path: Path) -> None:
    """--max outruns a subscriber that spends 0.3 ms per message; the broker's queue
    absorbs the difference (a recording far larger than the queues would not fit:
    see the module docstring of streamfuse.record.replay)."""
    msgs = synthetic(1500)  # 3,300 messages
    path = record(tmp_path / "m.mcap", msgs)
    got = receive_replay(broker, [str(path), "--max"], len(msgs), per_message_s=0.0003)
    want = sorted(msgs, key=lambda m: m.t_ns)
    assert len(got) == len(msgs)
    assert [p for _t, p in got] == [[bytes(x) for x in codec.encode(m)] for m in want]


def test_replay_filters_offsets_and_restamp(broker, tmp_path: Path) -> None:
    msgs = irregular(1.0)
    path = record(tmp_path / "f.mcap", msgs)
    before = clock.now_ns()
    want = [m for m in msgs if m.topic == "room1/video" and T0 + 200 * MS <= m.t_ns < T0 + 700 * MS]
    got = receive_replay(broker, [str(path), "--max", "--topics", "room1/vid", "--start", "0.2", "--end", "0.7",
                                  "--restamp"], len(want))
    dec = [codec.decode(p) for _t, p in got]
    assert [m.header.seq for m in dec] == [m.header.seq for m in want]
    assert all(bytes(a.payload[0]) == bytes(b.payload[0]) for a, b in zip(dec, want, strict=True))
    shift = dec[0].t_ns - want[0].t_ns
    assert dec[0].t_ns >= before and [m.t_ns - shift for m in dec] == [m.t_ns for m in want]


def test_replay_bad_input(broker, tmp_path: Path, capsys) -> None:
    from streamfuse.cli import main

    cfg = ["--config", str(broker.path)]
    (tmp_path / "x.mcap").write_text("hello")
    assert main(["replay", str(tmp_path / "x.mcap"), *cfg]) == 1  # in-process: these fail before any socket
    assert "streamfuse replay: " in capsys.readouterr().err.splitlines()[-1]
    assert main(["replay", str(tmp_path / "missing.mcap"), *cfg]) == 1
    assert "no such file" in capsys.readouterr().err
    assert main(["replay", str(tmp_path / "x.mcap"), "--rate", "0", *cfg]) == 2
    for bad in (["--rate", "nan"], ["--start", "-5"], ["--end", "inf"]):
        assert main(["replay", str(tmp_path / "x.mcap"), *bad, *cfg]) == 2, bad
        assert f"{bad[0]} must be a number" in capsys.readouterr().err
    # Two recordings of one source over the same seconds would interleave: refused, naming both.
    record(tmp_path / "a.mcap", irregular(3.0))
    record(tmp_path / "b.mcap", irregular(3.0))
    assert main(["replay", str(tmp_path / "a.mcap"), str(tmp_path / "b.mcap"), "--max", *cfg]) == 1
    err = capsys.readouterr().err
    assert "a.mcap and " in err and "b.mcap both hold " in err
    r = run_streamfuse(["replay", str(tmp_path / "x.mcap"), *cfg])  # and as a process: one line, no traceback
    assert r.returncode == 1 and r.stderr.strip().endswith("not an MCAP file (bad magic)") and "Traceback" not in r.stderr
    # A truncated recording: what precedes the damage is replayed, with a warning.
    msgs = irregular(1.0)
    data = record(tmp_path / "t.mcap", msgs, chunk_size=16 * 1024).read_bytes()
    (tmp_path / "t.mcap").write_bytes(data[: len(data) * 2 // 3])
    got = receive_replay(broker, [str(tmp_path / "t.mcap"), "--max"], len(msgs))
    assert 0 < len(got) < len(msgs)
    assert main(["inspect", str(tmp_path / "t.mcap")]) == 1
    assert "truncated" in capsys.readouterr().out
    # An MCAP file from another program: what is decodable is replayed, the rest counted.
    from mcap.writer import Writer

    from streamfuse.record import format as fmt

    ours = irregular(0.3)
    with open(tmp_path / "foreign.mcap", "wb") as f:
        w = Writer(f)
        w.start(profile="", library="another program")
        js = w.register_channel("/pose", "json", w.register_schema("pose", "jsonschema", b"{}"))
        sf = w.register_schema(fmt.SCHEMA_NAME, fmt.SCHEMA_ENCODING, fmt.SCHEMA_TEXT)
        chans: dict[str, int] = {}
        for i, m in enumerate(ours):
            w.add_message(js, m.t_ns, b'{"x": %d}' % i, m.t_ns)
            ch = chans.setdefault(m.topic, w.register_channel(m.topic, fmt.MESSAGE_ENCODING, sf))
            w.add_message(ch, m.t_ns, fmt.frame(codec.encode(m)[1:]), m.t_ns)
        w.finish()
    logs: list[str] = []
    got = receive_replay(broker, [str(tmp_path / "foreign.mcap"), "--max"], len(ours), logs=logs)
    assert [p for _t, p in got] == [[bytes(x) for x in codec.encode(m)] for m in ours]
    assert f"skipped {len(ours)} undecodable {{'encoding': {len(ours)}}}" in logs[0]


def test_inspect_reports_topics_counts_and_gaps(tmp_path: Path) -> None:
    import json

    msgs = [m for m in irregular(2.0) if not (m.topic == "room1/audio" and m.header.seq in (10, 11, 12))]
    path = record(tmp_path / "i.mcap", msgs)
    r = run_streamfuse(["inspect", "--json", str(path)])
    assert r.returncode == 0, r.stderr
    (st,) = json.loads(r.stdout)
    topics = {t["topic"]: t for t in st["topics"]}
    assert {k: v["messages"] for k, v in topics.items()} == {
        "room1/audio": 97, "room1/text": 12, "room1/video": 61}
    assert topics["room1/audio"]["seq_gaps"] == 3 and topics["room1/video"]["seq_gaps"] == 0
    assert abs(topics["room1/video"]["rate_hz"] - 30) < 1
    assert st["complete"] and st["compression"] == "zstd" and st["compression_ratio"] > 1
    assert 1.9 < st["duration_s"] < 2.1
    text = run_streamfuse(["inspect", str(path)])
    assert text.returncode == 0 and "room1/audio" in text.stdout and "compression ratio" in text.stdout


def test_replay_loop_stops_promptly_on_sigterm(broker, tmp_path: Path) -> None:
    """A looping, restamped replay (what the demo and the soak run) stops on SIGTERM
    mid-pass, not at the end of the pass; a long recorded gap does not delay it."""
    msgs = irregular(1.0)
    # a 300 s silence after the first second: a paced replay sleeps through it (75 s at
    # --rate 4), far longer than the 30 s ceiling on its stop below, so a replay that
    # waits for the end of the pass fails the test without the test timing anything
    msgs.append(codec.text_message("room1", 99, T0 + 301_000 * MS, "after the gap"))
    path = record(tmp_path / "loop.mcap", msgs)
    with zmq.Context() as ctx:
        sub = connect_sub(ctx, broker.cfg.bus, ["room1/"])
        probe = Probe(ctx, broker.cfg.bus)
        try:
            probe.wait_subscribers(b"room1/")
            proc = streamfuse(["replay", str(path), "--loop", "--restamp", "--rate", "4",
                               "--config", str(broker.path)], stderr=subprocess.PIPE, text=True)
            try:
                n = 0
                while n < len(msgs) - 1:  # the whole first second of the first pass
                    assert sub.poll(10_000), "replay published nothing"
                    sub.recv_multipart()
                    n += 1
                proc.terminate()
                proc.wait(30)  # raises past the ceiling; timings live in bench/
                assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
            finally:
                stop(proc)
                if proc.stderr:
                    proc.stderr.close()
        finally:
            probe.close()
            sub.close()

"""Bus throughput: streamfuse codec + broker against raw pyzmq, measured in the same run.

Three legs per payload, each a sender process and a receiver process over ipc://:

- ``raw``:   pyzmq PUB -> SUB directly, ``[topic, payload]`` sent part by part with
  ``copy=False`` (``wire.sockets.send_parts``, the call the captures use);
- ``proxy``: the same through a bare XSUB/XPUB ``zmq.proxy`` process (the ceiling of any
  brokered path on this machine, docs/benchmarks.md);
- ``proxy3``: the bare proxy carrying docs/protocol.md's ``[topic, header, payload]``,
  the header encoded once up front and never decoded: the ceiling of this wire layout
  through any broker, with no codec work at all;
- ``streamfuse``: ``capture.publish.StreamPublisher.send`` of ``codec.frame_message`` /
  ``audio_message`` in the sender (build, encode with validation, send, count),
  a real ``streamfuse broker`` process, ``codec.decode`` (full validation) in the receiver;
  frames inline (``bus.frame_plane = "inline"``);
- ``shm`` (frames only): the same with the frame plane, as a camera on the daemon's host
  sends: the sender copies each frame into its ring and publishes the reference; the
  receiver (as the aligner) decodes it and checks that the slot still holds the frame.
  A frame overwritten before that check is not counted.

Payloads: a 640x480x3 uint8 frame (922 KB) and a 20 ms 16 kHz audio block (320 float32).
Legs run in rotated order over ``--rounds`` rounds; the median receiver rate of each leg
is reported with its ratio to ``raw``, ``proxy`` and ``proxy3``. Then 8 paced senders publish
640x480 frames at 30 fps each through the broker for ``--cameras-s`` seconds, and the
receiver counts sequence gaps (the goal: none lost).

    .venv/bin/python bench/bus_throughput.py            # ~2 min on 2 cores
    .venv/bin/python bench/bus_throughput.py --leg-s 1 --rounds 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PAYLOADS = {"frame": (480, 640, 3), "audio": (320, 1)}
LEGS = ("raw", "proxy", "proxy3", "streamfuse", "shm")
SHM_SLOTS = 256  # the sender runs flat out: the ring must cover the queues behind it


def legs(payload: str) -> tuple[str, ...]:
    return LEGS if payload == "frame" else tuple(leg for leg in LEGS if leg != "shm")
TOPIC = b"bench/video"


def _array(payload: str):
    import numpy as np

    if payload == "frame":
        return np.random.default_rng(0).integers(0, 255, PAYLOADS["frame"], dtype=np.uint8)
    return np.random.default_rng(0).standard_normal(PAYLOADS["audio"]).astype(np.float32)


# ----------------------------------------------------------------------------- processes


def _builder(leg: str, payload: str, arr, endpoint: str):
    """``(build(seq) -> Message, plane or None)`` for the streamfuse legs."""
    from streamfuse.wire import codec

    if leg == "shm":
        from streamfuse.config import BusConfig
        from streamfuse.frameplane.writer import PlaneWriter

        plane = PlaneWriter.open(BusConfig(input=endpoint), "bench-video", slots=SHM_SLOTS,
                                 nbytes=arr.nbytes)
        return (lambda seq: plane.message("bench", seq, time.time_ns(), arr, encoding="raw",
                                          shape=arr.shape)), plane
    if payload == "frame":
        return (lambda seq: codec.frame_message("bench", seq, time.time_ns(), arr)), None
    return (lambda seq: codec.audio_message("bench", seq, time.time_ns(), arr, 16000)), None


def sender(leg: str, payload: str, endpoint: str, ready, done, out, done_reading) -> None:
    """Publish as fast as possible once the receiver has seen a warm-up message."""
    import zmq

    from streamfuse.capture.publish import StreamPublisher
    from streamfuse.wire import codec
    from streamfuse.wire.sockets import send_parts

    arr = _array(payload)
    raw = memoryview(arr).cast("B")
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUB)
    sock.sndhwm = 1000
    sock.linger = 0
    sock.connect(endpoint)
    plane = None
    if leg in ("streamfuse", "shm"):
        # What a capture does per message: StreamPublisher.send builds, encodes (validating),
        # sends and counts (Prometheus counters included).
        pub = StreamPublisher(sock, "bench", "video" if payload == "frame" else "audio")
        build, plane = _builder(leg, payload, arr, endpoint)

        def send() -> None:
            pub.send(build)
    else:
        # Raw pyzmq: the same per-part zmq.Socket.send calls the captures make
        # (wire.sockets.send_parts; pyzmq's send_multipart costs ~1 us more per part).
        parts = [TOPIC if payload == "frame" else b"bench/audio", raw]
        if leg == "proxy3":
            parts = codec.encode(codec.frame_message("bench", 0, 1, arr) if payload == "frame"
                                 else codec.audio_message("bench", 0, 1, arr, 16000))

        def send() -> None:
            send_parts(sock, parts)
    seq = 0
    while not ready.is_set():  # slow joiner: wait until messages reach the receiver
        send()
        seq += 1
        time.sleep(0.01)
    cpu0, seq0 = time.process_time(), seq
    while True:
        for _ in range(64):
            send()
        seq += 64
        if done.is_set():
            break
    out.put(("sender", (time.process_time() - cpu0) / max(seq - seq0, 1)))
    sock.close()
    ctx.term()
    if plane is not None:
        done_reading.wait(10)  # the receiver's last checks need the ring
        plane.close()


def receiver(leg: str, endpoint: str, duration_s: float, ready, done, out, done_reading,
             bind: bool = False) -> None:
    """Count (and for streamfuse, decode) messages for ``duration_s`` after warm-up.

    ``bind``: the direct leg's SUB binds and the PUB connects."""
    import zmq

    from streamfuse.wire import codec

    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.rcvhwm = 1000
    sock.linger = 0
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    if bind:
        sock.bind(endpoint)
    else:
        sock.connect(endpoint)
    decode = leg in ("streamfuse", "shm")
    reader = None
    if leg == "shm":
        from streamfuse.frameplane.ring import RingReader

        reader = RingReader()
    if not sock.poll(20000):
        out.put(("receiver", 0.0, 0.0))
        return
    sock.recv_multipart(copy=False)
    ready.set()
    n = 0
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    deadline = t0 + duration_s
    while True:
        if not sock.poll(2000):
            break
        parts = sock.recv_multipart(copy=False)
        if decode:
            m = codec.decode(parts)
            if reader is not None and reader.read(codec.frame_ref(m), _valid) is None:
                continue  # overwritten before the aligner would have seen it
        n += 1
        if (n & 63) == 0 and time.perf_counter() >= deadline:
            break
    elapsed = time.perf_counter() - t0
    done.set()
    done_reading.set()
    if reader is not None:
        reader.close()
    out.put(("receiver", n / elapsed, (time.process_time() - cpu0) / max(n, 1)))
    sock.close()
    ctx.term()


def _valid(view) -> bool:
    return True


def proxy(front: str, back: str) -> None:
    import zmq

    ctx = zmq.Context()
    xsub, xpub = ctx.socket(zmq.XSUB), ctx.socket(zmq.XPUB)
    xsub.rcvhwm = xpub.sndhwm = 10000  # as the streamfuse broker (10 x bus.hwm)
    xsub.bind(front)
    xpub.bind(back)
    try:
        zmq.proxy(xsub, xpub)
    except zmq.ContextTerminated:
        pass


# ----------------------------------------------------------------------------- legs


class Bus:
    """A broker process for one leg: a bare proxy or ``streamfuse broker``."""

    def __init__(self, kind: str, root: Path) -> None:
        self.front = f"ipc://{root}/in"
        self.back = f"ipc://{root}/out"
        self.proc: mp.Process | subprocess.Popen | None = None
        self.kind = kind
        if kind == "proxy":
            self.proc = mp.get_context("spawn").Process(target=proxy, args=(self.front, self.back), daemon=True)
            self.proc.start()
        else:
            cfg = root / "bench.toml"
            cfg.write_text(f'[bus]\ninput = "{self.front}"\noutput = "{self.back}"\n[metrics]\nlisten = ""\n')
            self.proc = subprocess.Popen([sys.executable, "-m", "streamfuse", "broker", "--config", str(cfg)],
                                         stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not (Path(self.front[6:]).exists() and Path(self.back[6:]).exists()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kind} did not bind its sockets")
            time.sleep(0.02)

    def close(self) -> None:
        if isinstance(self.proc, subprocess.Popen):
            self.proc.terminate()
            self.proc.wait(10)
        elif self.proc is not None:
            self.proc.terminate()
            self.proc.join(10)


def run_leg(leg: str, payload: str, duration_s: float) -> tuple[float, float, float]:
    """Receiver messages per second of one leg, and the sender's and receiver's CPU
    microseconds per message (a figure that a busy machine disturbs much less)."""
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="sf-bus-") as d:
        root = Path(d)
        bus = None
        if leg == "raw":
            pub_ep = sub_ep = f"ipc://{root}/direct"
        else:
            bus = Bus("streamfuse" if leg in ("streamfuse", "shm") else "proxy", root)
            pub_ep, sub_ep = bus.front, bus.back
        ready, done, out, done_reading = ctx.Event(), ctx.Event(), ctx.Queue(), ctx.Event()
        r = ctx.Process(target=receiver, args=(leg, sub_ep, duration_s, ready, done, out, done_reading,
                                               leg == "raw"))
        r.start()
        if leg == "raw":
            while not Path(sub_ep[6:]).exists():
                time.sleep(0.01)
        s = ctx.Process(target=sender, args=(leg, payload, pub_ep, ready, done, out, done_reading))
        s.start()
        try:
            got = {}
            item = out.get(timeout=duration_s + 60)
            got[item[0]] = item[1:]
            done.set()
            item = out.get(timeout=30)
            got[item[0]] = item[1:]
        finally:
            done.set()
            s.join(10)
            r.join(10)
            for p in (s, r):
                if p.is_alive():
                    p.kill()
            if bus is not None:
                bus.close()
    rate, recv_cpu = got["receiver"]
    (send_cpu,) = got["sender"]
    return rate, send_cpu * 1e6, recv_cpu * 1e6


# ----------------------------------------------------------------------------- 8 cameras


def camera_sender(i: int, endpoint: str, fps: float, duration_s: float, ready, start_at) -> None:
    import zmq

    from streamfuse.wire import codec

    arr = _array("frame")
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUB)
    sock.linger = 2000
    sock.sndhwm = 1000
    sock.connect(endpoint)
    ready.put(i)
    while start_at.value == 0.0 or time.time() < start_at.value:
        time.sleep(0.005)
    t0 = start_at.value
    n = int(duration_s * fps)
    src = f"cam{i}"
    for seq in range(n):
        due = t0 + seq / fps
        delay = due - time.time()
        if delay > 0:
            time.sleep(delay)
        sock.send_multipart(codec.encode(codec.frame_message(src, seq, time.time_ns(), arr)), copy=False)
    sock.close()
    ctx.term()


def eight_cameras(duration_s: float, cameras: int = 8, fps: float = 30.0) -> dict:
    """Paced VGA frames from ``cameras`` processes through the broker; count losses by seq."""
    import zmq

    from streamfuse.wire import codec

    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="sf-cams-") as d:
        bus = Bus("streamfuse", Path(d))
        zctx = zmq.Context()
        sub = zctx.socket(zmq.SUB)
        sub.rcvhwm = 1000
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(bus.back)
        ready, start_at = ctx.Queue(), ctx.Value("d", 0.0)
        procs = [ctx.Process(target=camera_sender, args=(i, bus.front, fps, duration_s, ready, start_at))
                 for i in range(cameras)]
        for p in procs:
            p.start()
        for _ in procs:
            ready.get(timeout=120)
        # every sender is connected: give the subscriptions a moment to reach them, then go together
        start_at.value = time.time() + 1.0
        last: dict[str, int] = {}
        received: dict[str, int] = {}
        bad = 0
        try:
            idle_until = start_at.value + duration_s + 3.0
            while time.time() < idle_until:
                if not sub.poll(200):
                    continue
                try:
                    m = codec.decode(sub.recv_multipart(copy=False))
                except codec.DecodeError:
                    bad += 1
                    continue
                last[m.header.source] = m.header.seq
                received[m.header.source] = received.get(m.header.source, 0) + 1
                if sum(received.values()) == cameras * int(duration_s * fps):
                    break
        finally:
            for p in procs:
                p.join(10)
            sub.close(linger=0)
            zctx.term()
            bus.close()
    expected = int(duration_s * fps)
    lost = {s: expected - received.get(s, 0) for s in [f"cam{i}" for i in range(cameras)]}
    return {"cameras": cameras, "fps": fps, "seconds": duration_s, "expected_per_camera": expected,
            "received": sum(received.values()), "lost": sum(lost.values()), "lost_per_camera": lost,
            "bad": bad}


# ----------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--leg-s", type=float, default=1.5, help="seconds measured per leg")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; leg order rotates each round")
    ap.add_argument("--payloads", nargs="+", default=list(PAYLOADS), choices=list(PAYLOADS))
    ap.add_argument("--cameras-s", type=float, default=5.0, help="seconds of the 8 x 30 fps test (0: skip)")
    ap.add_argument("--json", metavar="F", default=None, help="also write the results as JSON")
    args = ap.parse_args()

    results: dict = {"legs": {}, "command": " ".join(sys.argv)}
    for payload in args.payloads:
        names = legs(payload)
        runs: dict[str, list[tuple[float, float, float]]] = {leg: [] for leg in names}
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for leg in order:
                rate, send_us, recv_us = run_leg(leg, payload, args.leg_s)
                runs[leg].append((rate, send_us, recv_us))
                print(f"  {payload:5} round {r + 1} {leg:10} {rate:10.0f} msg/s   CPU per message: "
                      f"sender {send_us:7.2f} us, receiver {recv_us:7.2f} us", flush=True)
        med = {leg: statistics.median(x[0] for x in v) for leg, v in runs.items()}
        cpu = {leg: {"sender_us": statistics.median(x[1] for x in v),
                     "receiver_us": statistics.median(x[2] for x in v)} for leg, v in runs.items()}
        results["legs"][payload] = {"median_msg_s": med, "runs": runs, "cpu_us_per_msg": cpu,
                                    "vs_raw": {leg: med[leg] / med["raw"] for leg in names},
                                    "vs_proxy": {leg: med[leg] / med["proxy"] for leg in names}}
    print("\nmedian msg/s, and the ratio to raw pyzmq direct (same run):")
    for payload, res in results["legs"].items():
        m, v = res["median_msg_s"], res["vs_raw"]
        print(f"{payload:8} " + "  ".join(f"{leg} {m[leg]:.0f} ({v[leg]:.2f})" for leg in m))
    print("\nCPU microseconds per message (median; sender / receiver):")
    for payload, res in results["legs"].items():
        c = res["cpu_us_per_msg"]
        print(f"{payload:8} " + "  ".join(f"{leg} {c[leg]['sender_us']:.2f} / {c[leg]['receiver_us']:.2f}"
                                           for leg in c))
    if args.cameras_s > 0:
        cams = eight_cameras(args.cameras_s)
        results["eight_cameras"] = cams
        print(f"\n8 cameras x 30 fps x 640x480 raw for {cams['seconds']:.0f} s through the broker: "
              f"received {cams['received']}/{cams['cameras'] * cams['expected_per_camera']}, lost {cams['lost']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`streamfuse align` end to end over ipc: N sources at 30 fps through a real broker.

Real processes: ``streamfuse broker`` and ``streamfuse align``; this script
publishes, per source, 30 raw VGA frames/s, 50 audio blocks/s of 20 ms at
16 kHz and text heartbeats every 100 ms, stamped with the time they are sent
(as a capture does), and PULLs the windows.

Reported:
- loss: windows received vs the windows the offline aligner makes from the
  very messages sent (same keys and same contents expected);
- emit delay per window: ``emit_ns`` minus the instant the window could close:
  the send time of the message that let it close, found by running the same
  core over the messages at their send times (no transport, no processing),
  so it follows the aligner's own rules (watermarks on the snapped audio grid,
  heartbeats). This is "now - window end - lateness wait": it holds the
  broker hop, the aligner's work and its timer, nothing else. Goal: p99 < 5 ms
  and no loss;
- reference, same run: one-way latency of the same frames from this publisher
  through the broker to a plain SUB socket (the transport alone).

    .venv/bin/python bench/align_node.py                 # 8 sources, 20 s
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import zmq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamfuse import clock  # noqa: E402
from streamfuse.align.offline import windows_from_messages  # noqa: E402
from streamfuse.align.window import Aligner  # noqa: E402
from streamfuse.clock import NS_PER_MS as MS  # noqa: E402
from streamfuse.config import load  # noqa: E402
from streamfuse.stats import percentile  # noqa: E402
from streamfuse.wire import codec  # noqa: E402
from streamfuse.wire.schema import Message, Window  # noqa: E402


def config(run: Path, sources: int) -> Path:
    text = (f'[bus]\ninput = "ipc://{run}/in"\noutput = "ipc://{run}/out"\nhwm = 10000\n'
            f'[align]\noutput = "ipc://{run}/windows"\nrequired = ["video", "audio"]\n'
            f'[metrics]\nlisten = ""\n')
    for s in range(sources):
        text += (f'[[sources]]\nname = "s{s}"\n[sources.video]\ndevice = "0"\n'
                 f'[sources.audio]\nsamplerate = 16000\n[sources.text]\ninput = "zmq"\n')
    p = run / "streamfuse.toml"
    p.write_text(text)
    return p


def digest(w: Window) -> tuple:
    h = hashlib.blake2b(digest_size=16)
    for f in w.frames:
        h.update(np.asarray(f)[0].tobytes())  # the first row carries the frame's counter
    if w.audio is not None:
        h.update(np.asarray(w.audio).tobytes())
    return (w.present["video"], w.present["audio"], w.present["text"], tuple(w.frame_t_ns),
            round(w.audio_coverage, 9), tuple(w.texts), h.hexdigest())


class Collector(threading.Thread):
    """PULLs windows and, on a SUB, frames of source s0 (the transport reference)."""

    def __init__(self, ctx: zmq.Context, cfg, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.pull = ctx.socket(zmq.PULL)
        self.pull.linger = 0
        self.pull.rcvhwm = 100_000
        self.pull.connect(cfg.align.output)
        self.sub = ctx.socket(zmq.SUB)
        self.sub.linger = 0
        self.sub.setsockopt(zmq.SUBSCRIBE, b"s0/video")
        self.sub.connect(cfg.bus.output)
        self.stop_ev = stop
        self.windows: list[tuple[Window, int]] = []
        self.transport_ms: list[float] = []

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.pull, zmq.POLLIN)
        poller.register(self.sub, zmq.POLLIN)
        while not self.stop_ev.is_set():
            for sock, _ in poller.poll(50):
                parts = sock.recv_multipart(copy=False)
                now = clock.now_ns()
                if sock is self.pull:
                    self.windows.append((codec.decode_window(parts), now))
                else:
                    m = codec.decode(parts)
                    self.transport_ms.append((now - m.t_ns) / 1e6)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    args = ap.parse_args()
    run = Path(tempfile.mkdtemp(prefix="align-bench-"))
    path = config(run, args.sources)
    cfg = load(path, environ={})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    py = [sys.executable, "-m", "streamfuse"]
    broker = subprocess.Popen([*py, "broker", "--config", str(path)], env=env)
    align = subprocess.Popen([*py, "align", "--config", str(path)], env=env)
    ctx = zmq.Context()
    stop = threading.Event()
    collector = Collector(ctx, cfg, stop)
    pub = ctx.socket(zmq.XPUB)  # an XPUB sees the subscriptions: publish once all are in place
    pub.linger = 1000
    pub.sndhwm = 100_000
    pub.setsockopt(zmq.XPUB_VERBOSE, 1)
    try:
        pub.connect(cfg.bus.input)
        subs: set[bytes] = set()
        want = {f"s{s}/{st}".encode() for s in range(args.sources) for st in ("video", "audio", "text")}
        deadline = clock.now_ns() + 30 * 10**9
        while not want <= subs:
            if clock.now_ns() > deadline:
                print("the aligner never subscribed", file=sys.stderr)
                return 1
            if pub.poll(100):
                m = pub.recv()
                if m[:1] == b"\x01":
                    subs.add(m[1:])
        collector.start()
        cpu0, t0 = cpu_s(align.pid), clock.now_ns()
        sent, ready = publish(pub, args)
        cpu = (cpu_s(align.pid) - cpu0) / ((clock.now_ns() - t0) / 1e9)
        end_wait = clock.now_ns() + 2500 * MS  # the last windows close on the lateness bound
        while clock.now_ns() < end_wait:
            time.sleep(0.05)
    finally:
        stop.set()
        for p in (align, broker):
            p.terminate()
        for p in (align, broker):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        collector.join(2)
        for s in (pub, collector.pull, collector.sub):
            s.close(linger=0)
        ctx.term()
    report(args, cfg, sent, ready, collector)
    print(f"aligner process CPU while publishing: {100 * cpu:.1f} % of one core")
    return 0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def publish(pub: zmq.Socket, args: argparse.Namespace) -> tuple[list[Message], list[int]]:
    """Paced in real time; every message is stamped when it is sent."""
    n = args.sources
    frame = np.zeros((args.height, args.width, 3), np.uint8)
    block = np.zeros((320, 1), np.float32)
    rng = np.random.default_rng(0)
    period = {"video": 33_333_333, "audio": 20 * MS, "text": 100 * MS}
    start = clock.now_ns()
    due = {(s, st): start + s * 4 * MS for s in range(n) for st in period}
    seqs: dict[tuple[int, str], int] = defaultdict(int)
    sent: list[Message] = []
    sent_at: list[int] = []
    stop_at = start + int(args.seconds * 1e9)
    while True:
        now = clock.now_ns()
        if now >= stop_at:
            break
        for key, t_due in due.items():
            if now < t_due:
                continue
            s, st = key
            name = f"s{s}"
            t = clock.now_ns()
            i = seqs[key]
            seqs[key] += 1
            if st == "video":
                frame[0, :8] = np.frombuffer(i.to_bytes(8, "little"), np.uint8)[:, None]
                m = codec.frame_message(name, i, t, frame.copy())
            elif st == "audio":
                m = codec.audio_message(name, i, t, block + rng.standard_normal(1).astype(np.float32), 16000)
            else:
                m = codec.heartbeat_message(name, "text", i, t)
            pub.send_multipart(codec.encode(m), copy=False)
            sent.append(m)
            sent_at.append(clock.now_ns())
            due[key] = t_due + period[st]
        time.sleep(0.0005)
    return sent, sent_at


def ideal_close(cfg, sent: list[Message], sent_at: list[int]) -> dict[tuple[str, int], int]:
    """When each window could have closed: the core fed at the send times."""
    al = Aligner(cfg.align, samplerates={s.name: 16000 for s in cfg.sources})
    out = {}
    for m, at in zip(sent, sent_at, strict=True):
        al.push(m, at)
        for w in al.pop_ready(at):
            out[w.key] = at
    return out


def report(args, cfg, sent: list[Message], sent_at: list[int], col: Collector) -> None:
    ideal = ideal_close(cfg, sent, sent_at)
    sent = sorted(sent, key=lambda m: m.t_ns)
    want = {w.key: digest(w) for w in windows_from_messages(sent, cfg.align)}
    got = {w.key: digest(w) for w, _ in col.windows}
    # Windows closed only by flush at the end of the offline run are not expected live yet.
    last_t = max(m.t_ns for m in sent)
    want = {k: v for k, v in want.items() if k[1] + cfg.align.window_ms * MS + cfg.align.max_lateness_ms * MS <= last_t}
    missing = [k for k in want if k not in got]
    differ = [k for k in want if k in got and got[k] != want[k]]
    delays = [(w.emit_ns - ideal[w.key]) / 1e6 for w, _ in col.windows if w.key in ideal]
    pull_ms = [(recv - w.emit_ns) / 1e6 for w, recv in col.windows]
    print(f"{args.sources} sources x {args.seconds:.0f} s: {len(sent)} messages sent "
          f"({args.width}x{args.height} raw frames at 30 fps, 20 ms audio, heartbeats every 100 ms)")
    print(f"windows: expected {len(want)}, received {len(got)}, missing {len(missing)}, content differs {len(differ)}")
    print(f"emit delay (emit - instant the window could close): p50 {percentile(delays, 50):.2f} ms, "
          f"p99 {percentile(delays, 99):.2f} ms, max {max(delays):.2f} ms  [n={len(delays)}]")
    print(f"  window PUSH -> PULL: p50 {percentile(pull_ms, 50):.2f} ms, p99 {percentile(pull_ms, 99):.2f} ms")
    print(f"reference, frames publisher -> broker -> SUB: p50 {percentile(col.transport_ms, 50):.2f} ms, "
          f"p99 {percentile(col.transport_ms, 99):.2f} ms  [n={len(col.transport_ms)}]")
    for k in missing[:3]:
        print("  missing", k[0], (k[1] - last_t) / 1e6, "ms before the last message")
    for k in differ[:3]:
        print("  differs", k[0], (k[1] - last_t) / 1e6, "ms before the last message:", got[k][:5], "vs", want[k][:5])
    ok = not missing and not differ and percentile(delays, 99) < 5.0
    print("goal (no loss, p99 emit delay < 5 ms):", "met" if ok else "NOT met")


if __name__ == "__main__":
    sys.exit(main())

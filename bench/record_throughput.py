"""Can ``streamfuse record`` keep up with 4 raw VGA cameras at 30 fps + audio + text?

One publisher (this process) sends, through a real ``streamfuse broker``, four
640x480 raw BGR video streams at 30 fps (real footage from
``DATA/video/box.mp4`` when present, each camera at another offset, else
generated frames), 16 kHz mono audio in 20 ms blocks and one text message per
second: about 110 MB/s. Two subscribers run at the same time on the same
stream, each as its own process:

- the reference: a bare pyzmq SUB that only counts messages and bytes;
- ``streamfuse record`` (zstd chunks, default chunk size).

Reported: messages sent / received by the bare SUB / in the recording (lost =
sent - recorded; the recorder's own drop counters from its log), CPU seconds
per second of each subscriber, bytes per second written, compression ratio.
Run: ``.venv/bin/python bench/record_throughput.py [--seconds 15] [--data $DATA]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import zmq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.replay_speed import frames  # noqa: E402
from streamfuse import clock  # noqa: E402
from streamfuse.config import load  # noqa: E402
from streamfuse.record import reader  # noqa: E402
from streamfuse.wire import codec  # noqa: E402

BARE_SUB = r"""
import sys, zmq, signal
ctx = zmq.Context(); s = ctx.socket(zmq.SUB); s.rcvhwm = int(sys.argv[2])
for p in (b"cam", b"mic", b"chat"): s.subscribe(p)
s.connect(sys.argv[1]); n = b = 0
signal.signal(signal.SIGTERM, lambda *a: (print(n, b, flush=True), sys.exit(0)))
while True:
    parts = s.recv_multipart(copy=False); n += 1; b += sum(len(p) for p in parts)
"""


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--cameras", type=int, default=4)
    ap.add_argument("--data", type=Path, default=os.environ.get("DATA"),
                    help="the real-media directory (default: $DATA; without it, generated frames)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    data = args.data if args.data and args.data.exists() else None
    imgs = frames(data, n=120)
    with tempfile.TemporaryDirectory(prefix="sf-rec-bench-") as d:
        tmp = Path(d)
        cfg_path = tmp / "bench.toml"
        cfg_path.write_text(f'[bus]\ninput = "ipc://{tmp}/in"\noutput = "ipc://{tmp}/out"\n'
                            f'[metrics]\nlisten = ""\n')
        cfg = load(cfg_path, environ={})
        py = [sys.executable, "-m", "streamfuse"]
        broker = subprocess.Popen([*py, "broker", "--config", str(cfg_path)], cwd=ROOT)
        procs: list[subprocess.Popen] = []
        try:
            while not (tmp / "in").exists() or not (tmp / "out").exists():
                time.sleep(0.02)
            bare = subprocess.Popen([sys.executable, "-c", BARE_SUB, cfg.bus.output, str(cfg.bus.hwm)],
                                    stdout=subprocess.PIPE, text=True)
            rec = subprocess.Popen([*py, "record", "--out", str(tmp / "rec.mcap"), "--config", str(cfg_path)],
                                   cwd=ROOT, stderr=subprocess.PIPE, text=True)
            procs = [bare, rec]
            with zmq.Context() as ctx:
                pub = ctx.socket(zmq.XPUB)  # a PUB that also sees subscriptions arrive
                pub.sndhwm = cfg.bus.hwm
                pub.linger = 5000
                pub.connect(cfg.bus.input)
                seen: set[bytes] = set()
                while not {b"\x01", b"\x01chat"} <= seen:  # the recorder ("") and the bare SUB are in
                    if pub.poll(10000) == 0:
                        raise SystemExit(f"subscribers did not join: {seen}")
                    seen.add(pub.recv())
                sent: Counter[str] = Counter()
                sent_bytes = 0
                rng = np.random.default_rng(0)
                t0 = clock.now_ns() + 100 * clock.NS_PER_MS
                end = t0 + int(args.seconds * clock.NS_PER_S)
                events = [(t0 + i * clock.NS_PER_S // 30, "v", i) for i in range(int(args.seconds * 30))]
                events += [(t0 + i * 20 * clock.NS_PER_MS, "a", i) for i in range(int(args.seconds * 50))]
                events += [(t0 + i * clock.NS_PER_S + 3 * clock.NS_PER_MS, "t", i) for i in range(int(args.seconds))]
                cpu0 = {p.pid: cpu_s(p.pid) for p in procs}
                wall0 = clock.monotonic_ns()
                for t, kind, i in sorted(events):
                    clock.sleep_until_ns(t)
                    if kind == "v":
                        msgs = [codec.frame_message(f"cam{c}", i, clock.now_ns(), imgs[(i + 29 * c) % len(imgs)])
                                for c in range(args.cameras)]
                    elif kind == "a":
                        msgs = [codec.audio_message("mic", i, t, (0.1 * rng.standard_normal((320, 1))).astype(
                            np.float32), 16000)]
                    else:
                        msgs = [codec.text_message("chat", i, t, f"message number {i}")]
                    for m in msgs:
                        parts = codec.encode(m)
                        pub.send_multipart(parts, copy=False)
                        sent[m.topic] += 1
                        sent_bytes += sum(memoryview(p).nbytes for p in parts)
                late_s = (clock.now_ns() - end) / 1e9
                # Wait until the recorder has drained (its CPU stops climbing), then stop both.
                last = -1.0
                while (c := cpu_s(rec.pid)) != last:
                    last = c
                    time.sleep(0.5)
                wall = (clock.monotonic_ns() - wall0) / 1e9
                cpu = {p.pid: cpu_s(p.pid) - cpu0[p.pid] for p in procs}
                pub.close()
            rec.send_signal(signal.SIGTERM)
            bare.send_signal(signal.SIGTERM)
            rec_err = rec.communicate(timeout=60)[1]
            bare_out = bare.communicate(timeout=10)[0].split()
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            broker.terminate()
            broker.wait(10)
        files = reader.expand_paths([tmp])
        recorded: Counter[str] = Counter()
        size = raw = comp = 0
        for f in files:
            st = reader.inspect_file(f) if len(files) > 3 else None
            from mcap.reader import make_reader

            with open(f, "rb") as fh:
                summ = make_reader(fh).get_summary()
            assert summ is not None and summ.statistics is not None
            # MCAP topics name Foxglove channels: count by the wire topic they carry
            names = {c.id: reader.wire_route(c)[0] for c in summ.channels.values()}
            for cid, n in summ.statistics.channel_message_counts.items():
                recorded[names[cid]] += n
            size += f.stat().st_size
            raw += sum(c.uncompressed_size for c in summ.chunk_indexes)
            comp += sum(c.compressed_size for c in summ.chunk_indexes)
            del st
        log_line = [ln for ln in rec_err.splitlines() if "recorded" in ln]
        levels = [ln.split("INFO ", 1)[-1] for ln in rec_err.splitlines() if "zstd level" in ln]
    res = {
        "published": {"messages": sum(sent.values()), "mb_per_s": round(sent_bytes / 1e6 / args.seconds, 1),
                      "seconds": args.seconds, "publisher_late_at_end_s": round(late_s, 3),
                      "video": "box.mp4" if data else "generated"},
        "bare_sub": {"messages": int(bare_out[0]) if bare_out else 0,
                     "cpu_per_s": round(cpu[procs[0].pid] / wall, 3)},
        "recorder": {"messages": sum(recorded.values()), "lost": sum(sent.values()) - sum(recorded.values()),
                     "per_topic_lost": {k: sent[k] - recorded[k] for k in sent if sent[k] != recorded[k]},
                     "cpu_per_s": round(cpu[procs[1].pid] / wall, 3), "files": len(files),
                     "mb_written": round(size / 1e6, 1), "mb_per_s_written": round(size / 1e6 / args.seconds, 1),
                     "compression_ratio": round(raw / comp, 2) if comp else 0.0,
                     "log": log_line[-1] if log_line else rec_err.strip()[-300:], "level_changes": levels},
    }
    if args.json:
        print(json.dumps(res, indent=2))
        return
    p, b, r = res["published"], res["bare_sub"], res["recorder"]
    print(f"published {p['messages']} messages in {p['seconds']} s ({p['mb_per_s']} MB/s, video {p['video']}; "
          f"publisher {p['publisher_late_at_end_s']} s late at the end)")
    print(f"bare pyzmq SUB   received {b['messages']}, CPU {b['cpu_per_s']:.2f} s/s")
    print(f"streamfuse record wrote {r['messages']} (lost {r['lost']} {r['per_topic_lost'] or ''}), CPU "
          f"{r['cpu_per_s']:.2f} s/s, {r['mb_written']} MB in {r['files']} file(s) = {r['mb_per_s_written']} MB/s, "
          f"compression {r['compression_ratio']:.2f}x")
    print(f"  {r['log']}")
    for ln in r["level_changes"]:
        print(f"  {ln}")


if __name__ == "__main__":
    main()

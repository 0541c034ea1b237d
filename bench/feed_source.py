"""One synthetic source for bench/scale.py: VGA raw frames at 15 fps, 20 ms audio blocks
at 16 kHz, text heartbeats at 10 Hz, stamped with the current time, paced in real time.
Frames go through the frame plane like a camera's (``bus.frame_plane``: each frame is
written into the ring and published by reference) or inline.

It sends what the real captures send: an audio block goes out when its last sample
is in (20 ms after its ``t_ns``), and the video and text streams send a heartbeat
just after each window end (``[align]`` grid) as ``streamfuse capture`` does.

    python bench/feed_source.py CONFIG SOURCE SECONDS

Prints one JSON line at the end: messages sent, how late the pacing fell behind and the
CPU seconds this process used.
"""

from __future__ import annotations

import json
import resource
import sys
import time

import numpy as np
import zmq

from streamfuse import clock
from streamfuse.config import load
from streamfuse.frameplane.writer import PlaneWriter, hold_ms, ring_slots
from streamfuse.wire import codec
from streamfuse.wire.sockets import connect_pub


def main() -> int:
    cfg_path, source, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    cfg = load(cfg_path)
    ctx = zmq.Context()
    pub = connect_pub(ctx, cfg.bus, hwm=10_000)
    plane = PlaneWriter.open(cfg.bus, f"{source}-video", slots=ring_slots(15, hold_ms(cfg.align)),
                             nbytes=640 * 480 * 3)
    frame = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    block = (0.1 * np.sin(np.arange(320) / 5)).astype(np.float32).reshape(320, 1)
    seq = {"video": 0, "audio": 0, "text": 0}  # per-topic seq (video frames and heartbeats share one)
    time.sleep(0.5)  # let the connection come up (slow joiner); data before it would be lost
    hop_ns = cfg.align.hop_ms * 1_000_000
    start = -(-clock.now_ns() // 20_000_000) * 20_000_000  # ticks on the 20 ms grid: window ends fall on ticks
    t = start
    end = start + int(seconds * 1e9)
    worst_lag_ms = 0.0
    tick = 0  # 20 ms ticks; video every 66.7 ms: frame k at k * 1e9 / 15
    next_frame = start
    while t < end:
        clock.sleep_until_ns(t)
        worst_lag_ms = max(worst_lag_ms, (clock.now_ns() - t) / 1e6)
        if t > start:  # the block [t - 20 ms, t) is complete now
            pub.send_multipart(codec.encode(codec.audio_message(source, seq["audio"], t - 20_000_000, block, 16000)),
                               copy=False)
            seq["audio"] += 1
        last_frame = None
        while next_frame <= t:
            msg = plane.message(source, seq["video"], next_frame, frame, encoding="raw", shape=frame.shape)
            pub.send_multipart(codec.encode(msg), copy=False)
            seq["video"] += 1
            last_frame = next_frame
            next_frame = start + seq["video"] * 1_000_000_000 // 15
        window_ends = (t - cfg.align.window_ms * 1_000_000) % hop_ns == 0
        if window_ends and last_frame != t:
            # A window ends now and the newest frame is older: say the stream has passed the end
            pub.send_multipart(codec.encode(codec.heartbeat_message(source, "video", seq["video"], t)))
            seq["video"] += 1
        if tick % 5 == 0 or window_ends:  # every 100 ms, and just after each window end
            pub.send_multipart(codec.encode(codec.heartbeat_message(source, "text", seq["text"], t)))
            seq["text"] += 1
        tick += 1
        t += 20_000_000
    pub.close(linger=2000)
    ctx.term()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"source": source, "sent": seq, "worst_lag_ms": worst_lag_ms, "end_ns": end,
                      "cpu_s": ru.ru_utime + ru.ru_stime}), flush=True)
    # After the last windows' hold time, as a capture's ring would still hold its last frames.
    time.sleep(hold_ms(cfg.align) / 1000)
    plane.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`streamfuse align` as a real process: messages published into a real broker,
windows received on a PULL socket, compared with the offline aligner's."""

from __future__ import annotations

import numpy as np
import pytest
import zmq

from streamfuse import clock
from streamfuse.align.offline import windows_from_messages
from streamfuse.clock import NS_PER_MS as MS
from streamfuse.frameplane.inline import Inliner
from streamfuse.frameplane.ring import RingReader
from streamfuse.wire import codec
from streamfuse.wire.schema import Message, Window
from streamfuse.wire.sockets import connect_pub
from tests.helpers.frameplane import inline_window
from tests.helpers.proc import ipc_ready, stop, streamfuse, wait_for

CONFIG = """
[align]
window_ms = 1000
hop_ms = 500
max_lateness_ms = 250
frames_per_window = 4
text_context_ms = 1000
required = ["video", "audio"]
[[sources]]
name = "r1"
  [sources.video]
  device = "0"
  [sources.audio]
  samplerate = 16000
  [sources.text]
  input = "zmq"
[[sources]]
name = "r2"
  [sources.text]
  input = "zmq"
[[sources]]
name = "warm"
  [sources.text]
  input = "zmq"
"""


def content(w: Window) -> tuple:
    audio = None if w.audio is None else np.asarray(w.audio).tobytes()
    frames = [f.tobytes() if isinstance(f, np.ndarray) else bytes(f) for f in w.frames]
    return (w.source, w.seq, w.t_start_ns, tuple(sorted(w.present.items())), tuple(w.frame_t_ns),
            tuple(frames), w.frame_encoding, audio, w.samplerate, round(w.audio_coverage, 9),
            tuple(w.texts), tuple(w.text_t_ns))


def recording(t0: int, seconds: int) -> list[Message]:
    """r1: raw video 30 fps, 20 ms audio blocks (with a lost block), text; r2: JPEG video and text."""
    msgs: list[Message] = []
    for i in range(seconds * 30):
        img = np.full((24, 32, 3), i % 256, np.uint8)
        msgs.append(codec.frame_message("r1", i, t0 + i * 33_333_333, img))
        jpg = b"\xff\xd8\xff\xe0" + i.to_bytes(4, "big")  # never decoded by the aligner
        msgs.append(codec.frame_message("r2", i, t0 + 7 * MS + i * 33_333_333, jpg, encoding="jpeg",
                                        shape=(24, 32, 3)))
    for i in range(seconds * 50):
        if i != 17:
            block = (np.arange(320, dtype=np.float32) + 320 * i).reshape(-1, 1) / 1e5
            msgs.append(codec.audio_message("r1", i, t0 + i * 20 * MS, block, 16000))
    for i in range(seconds * 10):
        for src in ("r1", "r2"):
            msgs.append(codec.heartbeat_message(src, "text", i, t0 + i * 100 * MS))
    for i, (src, at) in enumerate([("r1", 300), ("r1", 310), ("r2", 1700), ("r1", 2400)]):
        msgs.append(codec.text_message(src, i, t0 + at * MS, f"{src} says {i}"))
    msgs.sort(key=lambda m: m.t_ns)
    return msgs


class Rig:
    def __init__(self, cfg) -> None:
        self.ctx = zmq.Context()
        self.pub = connect_pub(self.ctx, cfg.bus)
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.linger = 0
        self.pull.connect(cfg.align.output)
        self.got: list[Window] = []

    def receive(self, timeout_ms: int = 0) -> int:
        n = 0
        while self.pull.poll(timeout_ms if n == 0 else 0):
            self.got.append(codec.decode_window(self.pull.recv_multipart(copy=False)))
            n += 1
        return n

    def warm_up(self) -> None:
        """Publish on source 'warm' until a window of it comes back: the aligner's
        subscriptions have then reached the broker (they propagate asynchronously)."""
        seq = [0]

        def warm() -> bool:
            now = clock.now_ns()
            self.pub.send_multipart(codec.encode(codec.text_message("warm", seq[0], now, "w")))
            seq[0] += 1
            self.receive(20)
            return any(w.source == "warm" for w in self.got)

        wait_for(warm, timeout=20, what="the first window from the aligner")
        self.got.clear()

    def close(self) -> None:
        self.pub.close(linger=0)
        self.pull.close(linger=0)
        self.ctx.term()


@pytest.fixture
def aligner(broker):
    broker.write(CONFIG)
    proc = streamfuse(["align", "--config", str(broker.path)])
    rig = None
    try:
        wait_for(lambda: ipc_ready(broker.cfg.align.output), timeout=15, what="aligner's PUSH socket")
        rig = Rig(broker.cfg)
        rig.warm_up()
        yield broker, proc, rig
    finally:
        if rig is not None:
            rig.close()
        assert stop(proc) == 0


@pytest.mark.slow
def test_windows_through_broker_equal_the_offline_windows(aligner) -> None:
    env, proc, rig = aligner
    hop = 500 * MS
    t0 = (clock.now_ns() - 10_000 * MS) // hop * hop + 120 * MS  # a past timeline, sent at once
    msgs = recording(t0, 3)
    for m in msgs:
        rig.pub.send_multipart(codec.encode(m), copy=False)
    # Garbage on the way: undecodable, far-future and wrong-rate messages are dropped, not fatal.
    rig.pub.send_multipart([b"r1/video", b"\x93not a header", b""])
    rig.pub.send_multipart(codec.encode(codec.frame_message("r1", 999, t0 + 3600 * 10**9,
                                                            np.zeros((24, 32, 3), np.uint8))))
    rig.pub.send_multipart(codec.encode(codec.audio_message("r1", 999, t0 + 2990 * MS,
                                                            np.zeros((960, 1), np.float32), 48000)))
    want = [content(w) for w in windows_from_messages(msgs, env.cfg.align, sources=["r1", "r2"])]
    rig.got = []

    def mine() -> list[Window]:
        rig.receive(50)
        rig.got = [w for w in rig.got if w.source != "warm"]  # the warm-up's text lingers
        return rig.got

    wait_for(lambda: len(mine()) >= len(want), timeout=20, what=f"{len(want)} windows")
    rig.receive(300)
    got = [content(w) for w in mine()]
    assert len(got) == len(want)
    for src in ("r1", "r2"):  # in time order per source; sources interleave as they close
        assert [c for c in got if c[0] == src] == [c for c in want if c[0] == src]
    r1 = [w for w in rig.got if w.source == "r1"]
    assert all(w.frames[0].shape == (24, 32, 3) for w in r1 if w.present["video"])
    assert any(w.texts == ["r1 says 0", "r1 says 1"] for w in r1)
    gap = [w for w in r1 if w.t_start_ns <= t0 + 17 * 20 * MS < w.t_end_ns]
    assert gap and all(w.audio_coverage < 1.0 for w in gap)
    r2 = [w for w in rig.got if w.source == "r2"]
    assert r2 and all(w.frame_encoding == "jpeg" for w in r2 if w.present["video"])
    for w in rig.got:  # latency fields: closed on the source clock, sent on this host's
        assert w.close_ns >= w.t_end_ns and w.emit_ns > 0
    assert proc.poll() is None


# ----------------------------------------------------------------------------- real capture


def _counter(f: bytes | np.ndarray) -> int | None:
    import cv2

    from tests.helpers import media

    img = cv2.imdecode(np.frombuffer(f, np.uint8), cv2.IMREAD_COLOR) if isinstance(f, bytes) else f
    return media.read_counter(img)


class Bus:
    """What the bus carried (a SUB on room1) and the aligner's windows (PULL). Frames by
    reference are read on arrival, so truth and windows hold pixels as an inline bus would."""

    def __init__(self, ctx: zmq.Context, cfg) -> None:
        from streamfuse.wire.sockets import connect_sub

        self.truth = connect_sub(ctx, cfg.bus, ["room1"])
        self.pull = ctx.socket(zmq.PULL)
        self.pull.linger = 0
        self.pull.connect(cfg.align.output)
        self.msgs: list[Message] = []
        self.windows: list[Window] = []
        self.frames_changed = clock.monotonic_ns()
        self.reader = RingReader()
        self.inliner = Inliner(self.reader)

    def pump(self) -> None:
        for _ in range(500):  # bounded: the captures never pause for long
            if not self.truth.poll(5):
                break
            parts = self.inliner.parts(self.truth.recv_multipart(copy=False))
            assert parts is not None, "a frame was overwritten before it was read"
            m = codec.decode(parts)
            if m.kind == "frame":
                self.frames_changed = clock.monotonic_ns()
            self.msgs.append(m)
        while self.pull.poll(5):
            w = codec.decode_window(self.pull.recv_multipart(copy=False))
            self.windows.append(inline_window(w, self.reader))

    def count(self, kind: str) -> int:
        self.pump()
        return sum(m.kind == kind for m in self.msgs)

    def close(self) -> None:
        self.truth.close()
        self.pull.close()
        self.reader.close()


@pytest.mark.slow
def test_real_capture_file_video_virtual_mic_and_text(broker, tmp_path) -> None:
    """Real capture processes (a video file, PulseAudio virtual mic, `streamfuse send`)
    through the broker into `streamfuse align`; windows on a PULL socket."""
    from tests.helpers import media
    from tests.helpers.bus import Probe
    from tests.helpers.proc import run_streamfuse
    from tests.helpers.vmic import VirtualMic, pulseaudio_missing

    missing = pulseaudio_missing() or media.espeak_missing()
    if missing:
        pytest.skip(missing)
    video = media.make_video(tmp_path / "clip.avi", n_frames=90, fps=30, width=160, height=120)
    wav = media.speech_wav(tmp_path / "speech.wav", "seven three one", rate=16000)
    broker.write(
        '[align]\nmax_lateness_ms = 1000\ntext_context_ms = 3000\n'
        '[[sources]]\nname = "room1"\n'
        f'[sources.video]\ndevice = "{video}"\nwidth = 160\nheight = 120\nencoding = "jpeg"\n'
        '[sources.audio]\ndevice = "vmic"\nsamplerate = 16000\nchannels = 1\nblock_ms = 20\n'
        '[sources.text]\ninput = "zmq"\n')
    cfg = broker.cfg
    args = ["--config", str(broker.path)]
    with VirtualMic(tmp_path / "pulse") as mic, zmq.Context() as ctx:
        probe = Probe(ctx, cfg.bus)
        bus = Bus(ctx, cfg)
        align = streamfuse(["align", *args])
        try:
            caps = []
            player = None
            try:
                probe.wait_subscribers(b"room1/video")  # the aligner listens
                caps.append(streamfuse(["capture", "audio", "--source", "room1", *args], env=mic.env))
                caps.append(streamfuse(["capture", "text", "--source", "room1", *args]))
                wait_for(lambda: bus.count("audio") and bus.count("heartbeat"), timeout=30,
                         what="audio and heartbeats")
                player = mic.play(wav, loop=True)
                caps.append(streamfuse(["capture", "video", "--source", "room1", *args]))
                wait_for(lambda: bus.count("frame") >= 10, timeout=30, what="video frames")
                for word in ("seven", "three", "one"):
                    assert run_streamfuse(["send", word, "--source", "room1", *args]).returncode == 0

                def played() -> bool:
                    # A loaded machine may skip frames of the file: wait until it played out.
                    n = bus.count("frame")
                    quiet = clock.monotonic_ns() - bus.frames_changed > 1_500_000_000
                    return bus.count("text") >= 3 and (n >= 90 or (n >= 45 and quiet))

                wait_for(played, timeout=60, what="the whole clip")
            finally:
                if player is not None:
                    mic.stop_player(player)
                for c in caps:
                    assert stop(c) == 0
            last = max(m.t_ns for m in bus.msgs)

            def closed() -> bool:  # the last windows close on the lateness bound
                bus.pump()
                return any(w.t_end_ns > last for w in bus.windows)

            wait_for(closed, timeout=20, what="the last windows")
        finally:
            assert stop(align) == 0
            bus.close()
            probe.close()
    check_real_windows(cfg, bus.msgs, bus.windows)


def check_real_windows(cfg, truth: list[Message], got: list[Window]) -> None:
    keys = [w.key for w in got]
    assert len(keys) == len(set(keys))
    assert [w.t_start_ns for w in got] == sorted(w.t_start_ns for w in got)
    # Where all three streams ran, the live windows are exactly the offline ones.
    firsts = {s: min(m.t_ns for m in truth if m.topic == f"room1/{s}") for s in ("video", "audio", "text")}
    lasts = {s: max(m.t_ns for m in truth if m.topic == f"room1/{s}") for s in ("video", "audio", "text")}
    lo, hi = max(firsts.values()), min(lasts.values())
    offline = {w.key: w for w in windows_from_messages(sorted(truth, key=lambda m: m.t_ns), cfg.align)}
    steady = [w for w in got if w.t_start_ns >= lo and w.t_end_ns <= hi]
    assert len(steady) >= 2, (len(got), (hi - lo) / 1e9)
    lateness = cfg.align.max_lateness_ms * MS
    on_time = [w for w in steady if w.close_ns < w.t_end_ns + lateness]  # not closed on the bound
    assert len(on_time) >= len(steady) / 2
    for w in on_time:  # a window closed on the lateness bound may lack data a stalled capture sent late
        assert content(w) == content(offline[w.key]), w.key
    for w in steady:
        counters = [_counter(f) for f in w.frames]
        assert None not in counters and counters == sorted(counters), counters  # the clip, in order
        if w.audio is not None:
            assert w.audio.shape == (16000, 1)
    # The capture processes are real and the machine may be loaded (a camera stall,
    # PulseAudio delivering fewer samples than its nominal rate: seen here, 320
    # every 21 ms): ask the streams' contents of most steady windows, not all.
    good = [w for w in steady if w.present["video"] and w.audio is not None and w.audio_coverage > 0.8
            and float(np.sqrt(np.mean(w.audio ** 2))) > 0.01]  # speech, not silence
    assert len(good) >= len(steady) / 2, [(w.present, w.audio_coverage) for w in steady]
    texts = [t for w in got for t in w.texts]
    assert {"seven", "three", "one"} <= set(texts), texts


def test_exit_codes_on_bad_endpoints(bus_env) -> None:
    from tests.helpers.proc import run_streamfuse

    bus_env.write('[align]\noutput = "ipc:///proc/streamfuse-nope/windows"\n')
    r = run_streamfuse(["align", "--config", str(bus_env.path)], timeout=30)
    assert r.returncode == 1 and "cannot open ipc:///proc/streamfuse-nope/windows" in r.stderr
    assert "Traceback" not in r.stderr
    bus_env.write(f'[align]\noutput = "ipc://{bus_env.run_dir}/w"\n[bus]\noutput = "tcp://10.1.2.3:5555"\n')
    r = run_streamfuse(["align", "--config", str(bus_env.path)], timeout=30)
    assert r.returncode == 2 and "bus: tcp://10.1.2.3:5555 is not local" in r.stderr

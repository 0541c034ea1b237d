"""``streamfuse capture audio``: PortAudio blocks onto the bus.

The PortAudio callback only copies each block, with its timing
(``inputBufferAdcTime``, ``currentTime``, :func:`clock.now_ns`) and overflow flag,
into a queue. The publishing loop maps the ADC time to the epoch clock and
stamps the block through :class:`BlockClock`, then publishes an audio message.

Why a :class:`BlockClock`: samples arrive without gaps (except on an overflow),
so block ``k`` truly starts ``k * frames / samplerate`` after block 0. The host
API's timestamps are much worse than that: ALSA's pulse plugin reports a latency
that jumps by hundreds of milliseconds while the stream settles, and some
backends report zeros (then the callback time, with its scheduling jitter, is
all we have). So ``t_ns`` follows the sample count, and the measured time only
steers it slowly (bounded slew), except after an overflow or a gross jump,
where the stream is re-anchored on the measured time.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from streamfuse import clock, metrics, readiness
from streamfuse.capture.publish import Backoff, StreamPublisher
from streamfuse.config import AudioConfig, BusConfig
from streamfuse.node import Runtime
from streamfuse.wire import codec
from streamfuse.wire.schema import Message
from streamfuse.wire.sockets import LINGER_MS, connect_pub

log = logging.getLogger("streamfuse.capture.audio")

# A stream that delivers nothing for this long is reopened.
STALL_S = 5.0


# ----------------------------------------------------------------------------- pure parts


class BlockClock:
    """Continuous block timestamps from noisy measurements.

    ``stamp(measured_ns, frames, overflow)`` returns the block's ``t_ns``: the
    previous block's ``t_ns`` plus its duration, nudged toward ``measured_ns`` by
    ``gain`` of the deviation but never by more than ``max_slew`` of a block
    (so consecutive blocks always advance by ``frames / samplerate`` within that
    fraction). On an overflow (samples were lost) or a deviation over
    ``reanchor_ns`` the block is stamped ``measured_ns`` and counted in
    ``reanchors``.
    """

    def __init__(self, samplerate: int, *, gain: float = 0.05, max_slew: float = 0.05,
                 reanchor_ns: int = clock.NS_PER_S) -> None:
        self.samplerate = samplerate
        self.gain = gain
        self.max_slew = max_slew
        self.reanchor_ns = reanchor_ns
        self.next_ns: float | None = None  # expected start of the next block
        self.reanchors = 0

    def stamp(self, measured_ns: int, frames: int, overflow: bool = False) -> int:
        duration_ns = frames * clock.NS_PER_S / self.samplerate
        if self.next_ns is None:
            t = float(measured_ns)
        else:
            deviation = measured_ns - self.next_ns
            if overflow or abs(deviation) > self.reanchor_ns:
                self.reanchors += 1
                t = float(measured_ns)
            else:
                limit = self.max_slew * duration_ns
                t = self.next_ns + max(-limit, min(limit, self.gain * deviation))
        self.next_ns = t + duration_ns
        return round(t)


def parse_device(device: str) -> int | str | None:
    """A PortAudio device: an index (``"3"``), a name (substring match), or None for
    PortAudio's default input (``"default"`` or ``""``)."""
    d = device.strip()
    if d.isdigit():
        return int(d)
    return None if d in ("", "default") else d


def blocksize(cfg: AudioConfig) -> int:
    """Frames per block: ``block_ms`` at ``samplerate``."""
    return max(1, round(cfg.block_ms * cfg.samplerate / 1000))


@dataclass
class Block:
    """One callback's data, as the callback left it."""

    data: np.ndarray  # (frames, channels) float32, a copy
    adc_s: float
    current_s: float
    now_ns: int
    overflow: bool


# ----------------------------------------------------------------------------- the node


class AudioCapture:
    """Open the input stream, publish blocks until ``stop``; reopen on failure."""

    def __init__(self, source: str, cfg: AudioConfig, bus: BusConfig) -> None:
        self.source = source
        self.cfg = cfg
        self.bus = bus
        self.device = parse_device(cfg.device)
        self.blocksize = blocksize(cfg)
        self.backoff = Backoff(10.0, initial_s=0.2)
        self.queue: queue.SimpleQueue[Block] = queue.SimpleQueue()
        self._overflows = metrics.overflows.labels(source)
        self.pub: StreamPublisher | None = None
        self.reanchors = 0

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        # PortAudio's thread: copy and hand over, nothing else.
        self.queue.put(Block(indata.copy(), time_info.inputBufferAdcTime, time_info.currentTime,
                             clock.now_ns(), bool(status.input_overflow)))

    def run(self, stop: threading.Event, *, ctx: zmq.Context | None = None) -> int:
        with Runtime(ctx) as rt:
            sock = rt.open(None, lambda c: connect_pub(c, self.bus), linger=LINGER_MS)
            return self._run(stop, sock)

    def _run(self, stop: threading.Event, sock: zmq.Socket) -> int:
        import sounddevice as sd  # PortAudio is loaded only by the process that records

        self.pub = pub = StreamPublisher(sock, self.source, "audio")
        log.info("audio %s: starting on device %r (%d Hz, %d ch, %d-frame blocks)", self.source,
                 self.cfg.device, self.cfg.samplerate, self.cfg.channels, self.blocksize)
        attempts = 0
        while not stop.is_set():
            if attempts:
                pub.reconnected()
            attempts += 1
            try:
                stream = sd.InputStream(device=self.device, samplerate=self.cfg.samplerate,
                                        channels=self.cfg.channels, blocksize=self.blocksize,
                                        dtype="float32", callback=self._callback)
            except (sd.PortAudioError, ValueError) as e:
                delay = self.backoff.next_delay_s()
                log.warning("audio %s: cannot open %r (%s), retrying in %.1f s", self.source,
                            self.cfg.device, e, delay)
                stop.wait(delay)
                continue
            with stream:
                log.info("audio %s: %s %s", self.source,
                         "reopened" if attempts > 1 else "opened", stream.device)
                if attempts == 1:
                    readiness.report("ready")
                if self._pump(stop, pub):
                    break
            log.warning("audio %s: no audio for %.0f s; reopening", self.source, STALL_S)
        log.info("audio %s stopped: %s timestamp_reanchors=%d", self.source, pub.counts.line(),
                 self.reanchors)
        return 0

    def _pump(self, stop: threading.Event, pub: StreamPublisher) -> bool:
        """Publish queued blocks; True when stopped, False when the stream stalled."""
        bclock = BlockClock(self.cfg.samplerate)
        last_ns = clock.now_ns()
        first = True
        while not stop.is_set():
            try:
                block = self.queue.get(timeout=0.1)
            except queue.Empty:
                # The first callback can take a second or more (PulseAudio starting a stream).
                if clock.now_ns() - last_ns > (STALL_S + 5 * first) * clock.NS_PER_S:
                    return False
                continue
            first = False
            last_ns = block.now_ns
            self.backoff.reset()
            if block.overflow:
                pub.counts.overflows += 1
                self._overflows.inc()
            measured = clock.adc_time_to_epoch_ns(block.adc_s, block.current_s, block.now_ns)
            before = bclock.reanchors
            t_ns = bclock.stamp(measured, len(block.data), block.overflow)
            if bclock.reanchors != before:
                self.reanchors += 1
                log.info("audio %s: timestamps re-anchored (%s)", self.source,
                         "overflow" if block.overflow else "clock jump")
            pub.grabbed()
            pub.send(functools.partial(self._message, t_ns, block.data))
        return True

    def _message(self, t_ns: int, data: np.ndarray, seq: int) -> Message:
        return codec.audio_message(self.source, seq, t_ns, data, self.cfg.samplerate)


def main(source: str, cfg: AudioConfig, bus: BusConfig, stop: threading.Event, *,
         grid: tuple[int, int] | None = None) -> int:
    # ``grid`` is unused: blocks come every ``block_ms`` and each one's end is the watermark.
    return AudioCapture(source, cfg, bus).run(stop)

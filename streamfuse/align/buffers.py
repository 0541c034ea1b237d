"""Per-stream buffers of the aligner (pure: no sockets, no clocks, no globals).

Each buffer keeps only what the open windows can still use, and hands back a
window's contents for ``[start, end)``. Times are epoch nanoseconds; audio
positions are absolute sample indices ``round(t_ns * samplerate / 1e9)``, so
every source and window agrees on one sample grid per rate.

The buffers assume what the wire guarantees: messages of one stream arrive in
publication order. An out-of-order message is still placed correctly, only the
memory-saving shortcuts skip it.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence

import numpy as np

from streamfuse.wire.schema import AudioHeader, FrameHeader, Message

NS_PER_S = 1_000_000_000


def sample_index(t_ns: int, samplerate: int) -> int:
    """The absolute sample index of epoch time ``t_ns`` (round half up)."""
    return (t_ns * samplerate + NS_PER_S // 2) // NS_PER_S


def sample_time_ns(index: int, samplerate: int) -> int:
    """The epoch time of absolute sample ``index`` (floor)."""
    return index * NS_PER_S // samplerate


# ----------------------------------------------------------------------------- video


class FrameLattice:
    """The instants where frame selection looks, repeated every hop.

    Window ``k`` spans ``[S, S + W)`` with ``S = k * hop``; its ``n`` sampling
    instants are ``S + (i + 0.5) * W / n``. Together with the window boundaries
    these instants form a lattice of period ``hop``; between two neighbouring
    lattice points (a *cell*) only the first and the last frame can ever be the
    nearest frame to an instant inside a window, so a buffer may forget the
    others. Coordinates are scaled by ``2 n`` to stay in integers.
    """

    def __init__(self, window_ns: int, hop_ns: int, n: int) -> None:
        self.scale = 2 * n
        self.period = 2 * n * hop_ns
        offsets = {0, (2 * n * window_ns) % self.period}
        offsets.update(((2 * i + 1) * window_ns) % self.period for i in range(n))
        self.offsets = sorted(offsets)

    def cell(self, t_ns: int) -> int:
        q, r = divmod(t_ns * self.scale, self.period)
        return q * len(self.offsets) + bisect_right(self.offsets, r)


class VideoBuffer:
    """Frames of one stream, sorted by ``t_ns``; frames stay the received buffers.

    All buffered frames share one format ``(encoding, shape)``: a frame in a new
    format (a camera reopened at another size) replaces the buffer.
    """

    def __init__(self, lattice: FrameLattice) -> None:
        self.lattice = lattice
        self.ts: list[int] = []
        self.cells: list[int] = []
        self.msgs: list[Message] = []
        self.format: tuple[str, tuple[int, ...]] | None = None
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self.ts)

    def push(self, t_ns: int, msg: Message) -> tuple[str | None, int]:
        """Buffer a frame. Returns ``(reject_reason or None, frames dropped by a format change)``."""
        h = msg.header
        assert isinstance(h, FrameHeader)
        fmt = (h.encoding, tuple(h.shape))
        dropped = 0
        if fmt != self.format:
            dropped = len(self.ts)
            self.ts, self.cells, self.msgs, self.nbytes = [], [], [], 0
            self.format = fmt
        ts = self.ts
        size = len(msg.payload[0])
        cell = self.lattice.cell(t_ns)
        if not ts or t_ns > ts[-1]:
            ts.append(t_ns)
            self.cells.append(cell)
            self.msgs.append(msg)
            self.nbytes += size
            # The middle one of three frames in one cell is never anyone's nearest.
            if len(ts) >= 3 and self.cells[-3] == cell and self.cells[-2] == cell:
                self.nbytes -= len(self.msgs[-2].payload[0])
                del ts[-2], self.cells[-2], self.msgs[-2]
            return None, dropped
        i = bisect_left(ts, t_ns)
        if ts[i] == t_ns:
            return "duplicate", dropped
        ts.insert(i, t_ns)
        self.cells.insert(i, cell)
        self.msgs.insert(i, msg)
        self.nbytes += size
        return None, dropped

    def select(self, start_ns: int, window_ns: int, n: int) -> tuple[list[np.ndarray | bytes], list[int]]:
        """The frames nearest to the ``n`` instants ``start + (i + 0.5) * window / n``.

        Only frames inside ``[start, start + window)`` count; on a tie the earlier
        frame wins; a frame is repeated when it is nearest to several instants.
        Returns ``(frames, frame_t_ns)``, both empty when the window has no frame.
        """
        ts = self.ts
        lo = bisect_left(ts, start_ns)
        hi = bisect_left(ts, start_ns + window_ns)
        if lo >= hi:
            return [], []
        scale = 2 * n
        chosen: list[int] = []
        for i in range(n):
            x = scale * start_ns + (2 * i + 1) * window_ns  # the instant, scaled by 2n
            j = bisect_right(ts, x // scale, lo, hi)  # first frame after the instant
            if j == lo:
                chosen.append(j)
            elif j == hi:
                chosen.append(j - 1)
            else:
                before = x - scale * ts[j - 1]
                after = scale * ts[j] - x
                chosen.append(j - 1 if before <= after else j)
        return [_frame(self.msgs[j]) for j in chosen], [ts[j] for j in chosen]

    def first_t(self) -> int | None:
        return self.ts[0] if self.ts else None

    def last_t(self) -> int | None:
        return self.ts[-1] if self.ts else None

    def prune(self, before_ns: int) -> None:
        """Forget frames older than ``before_ns`` (the next open window's start)."""
        k = bisect_left(self.ts, before_ns)
        if k:
            self.nbytes -= sum(len(m.payload[0]) for m in self.msgs[:k])
            del self.ts[:k], self.cells[:k], self.msgs[:k]


def _frame(msg: Message) -> np.ndarray | bytes:
    """A raw frame as a zero-copy ``(h, w, 3)`` view, a JPEG as its bytes (never decoded)."""
    h = msg.header
    assert isinstance(h, FrameHeader)
    buf = msg.payload[0]
    if h.encoding == "raw":
        return np.frombuffer(buf, dtype=np.uint8).reshape(h.shape)
    return buf if isinstance(buf, bytes) else bytes(buf)


# ----------------------------------------------------------------------------- audio

_SCALE = {"int16": 1.0 / 32768.0, "int32": 1.0 / 2147483648.0}


def audio_array(msg: Message) -> np.ndarray | None:
    """A block as ``(frames, channels)`` float32 (a view when it already is float32);
    None for a sample type the aligner does not convert."""
    h = msg.header
    assert isinstance(h, AudioHeader)
    raw = np.frombuffer(msg.payload[0], dtype=h.dtype).reshape(h.frames, h.channels)
    if h.dtype == "float32":
        return raw
    if h.dtype == "float64":
        return raw.astype(np.float32)
    scale = _SCALE.get(h.dtype)
    if scale is None:
        return None
    return (raw * np.float32(scale)).astype(np.float32)


class AudioBuffer:
    """Audio blocks of one stream on the absolute sample grid.

    A block whose start is within ``snap`` samples of where the previous block
    ended is placed right after it: ADC timestamps jitter by a fraction of a
    millisecond, and taking them literally would leave one-sample holes and
    overlaps (clicks). Further apart, the timestamp wins: a real gap stays a gap
    (zeros), a real overlap is cut, the earlier-starting block keeping its samples.
    """

    def __init__(self) -> None:
        self.samplerate = 0
        self.channels = 0
        self.starts: list[int] = []
        self.blocks: list[np.ndarray] = []
        self.max_len = 0
        self.max_end: int | None = None  # end of the buffered blocks
        self.last_a: int | None = None  # untrimmed start of the newest appended block
        self.expect: int | None = None  # where the next block of this stream should start
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self.starts)

    def set_format(self, samplerate: int, channels: int) -> None:
        self.samplerate, self.channels = samplerate, channels
        self.expect = self.max_end = self.last_a = None

    def place(self, t_ns: int, frames: int) -> int:
        """The start sample of a block of ``frames`` stamped ``t_ns``; call once per block, in stream order."""
        a = sample_index(t_ns, self.samplerate)
        snap = min(max(1, self.samplerate * 2 // 1000), frames // 2)  # 2 ms, at most half a block
        if self.expect is not None and abs(a - self.expect) <= snap:
            a = self.expect
        self.expect = a + frames
        return a

    def push(self, a: int, block: np.ndarray) -> str | None:
        """Buffer ``block`` ``(frames, channels)`` float32 starting at sample ``a``;
        returns "duplicate" when every sample of it is already buffered."""
        end = a + len(block)
        if self.starts and self.last_a is not None and self.max_end is not None and a >= self.last_a:
            # In stream order every buffered block started at or before ``a``,
            # so [a, max_end) is covered already: keep only the new samples.
            if end <= self.max_end:
                return "duplicate"
            self.last_a = a
            if a < self.max_end:
                # Copy the tail so the cut part does not keep the message alive.
                block = block[self.max_end - a:].copy()
                a = self.max_end
            self.starts.append(a)
            self.blocks.append(block)
        elif not self.starts:
            self.last_a = a
            self.starts.append(a)
            self.blocks.append(block)
        else:
            i = bisect_right(self.starts, a)
            self.starts.insert(i, a)
            self.blocks.insert(i, block)
        self.max_end = end if self.max_end is None else max(self.max_end, end)
        self.max_len = max(self.max_len, len(block))
        self.nbytes += block.nbytes
        return None

    def assemble(self, s0: int, n: int) -> tuple[np.ndarray, int]:
        """Samples ``[s0, s0 + n)`` as ``(n, channels)`` float32 (zeros where no
        block was) and how many of them came from blocks."""
        out = np.zeros((n, self.channels), dtype=np.float32)
        starts, blocks = self.starts, self.blocks
        end = s0 + n
        i = bisect_left(starts, s0 - self.max_len + 1)
        filled = s0
        covered = 0
        # Blocks come in start order, so [a, filled) is always written already:
        # writing from max(a, filled) keeps the earliest block's samples.
        while i < len(starts) and starts[i] < end:
            a = starts[i]
            b = blocks[i]
            w0 = max(a, filled)
            w1 = min(a + len(b), end)
            if w1 > w0:
                out[w0 - s0:w1 - s0] = b[w0 - a:w1 - a]
                covered += w1 - w0
                filled = w1
            i += 1
        return out, covered

    def first_index(self) -> int | None:
        return self.starts[0] if self.starts else None

    def end_index(self) -> int | None:
        return self.max_end if self.starts else None

    def prune(self, s0: int) -> None:
        """Forget blocks that end at or before sample ``s0``."""
        k = bisect_left(self.starts, s0)
        if not k:
            return
        keep_s: list[int] = []
        keep_b: list[np.ndarray] = []
        for a, b in zip(self.starts[:k], self.blocks[:k], strict=True):
            if a + len(b) > s0:
                keep_s.append(a)
                keep_b.append(b)
            else:
                self.nbytes -= b.nbytes
        self.starts[:k] = keep_s
        self.blocks[:k] = keep_b
        if not self.starts:
            self.max_len = 0


# ----------------------------------------------------------------------------- text


class TextBuffer:
    """Text messages of one stream, sorted by ``t_ns`` (arrival order on ties)."""

    def __init__(self, *, window_ns: int, hop_ns: int, context_ns: int, max_messages: int) -> None:
        self.window_ns, self.hop_ns = window_ns, hop_ns
        self.context_ns, self.max_messages = context_ns, max_messages
        self.ts: list[int] = []
        self.texts: list[str] = []
        self.nbytes = 0
        self._cap = 4 * max_messages

    def __len__(self) -> int:
        return len(self.ts)

    def push(self, t_ns: int, text: str) -> None:
        if not self.ts or t_ns >= self.ts[-1]:
            self.ts.append(t_ns)
            self.texts.append(text)
        else:
            i = bisect_right(self.ts, t_ns)
            self.ts.insert(i, t_ns)
            self.texts.insert(i, text)
        self.nbytes += len(text)
        if len(self.ts) > self._cap:
            self._compact()
            self._cap = max(4 * self.max_messages, 2 * len(self.ts))

    def select(self, end_ns: int) -> tuple[list[str], list[int]]:
        """The newest ``max_messages`` with ``t_ns`` in ``[end - context, end)``, oldest first."""
        lo = bisect_left(self.ts, end_ns - self.context_ns)
        hi = bisect_left(self.ts, end_ns)
        lo = max(lo, hi - self.max_messages)
        return self.texts[lo:hi], self.ts[lo:hi]

    def first_t(self) -> int | None:
        return self.ts[0] if self.ts else None

    def last_t(self) -> int | None:
        return self.ts[-1] if self.ts else None

    def prune(self, next_end_ns: int) -> None:
        """Forget what no window ending at or after ``next_end_ns`` can show:
        messages older than its context, and those with ``max_messages`` newer
        ones before that end (every later window shows the newer ones instead)."""
        lo = bisect_left(self.ts, next_end_ns - self.context_ns)
        hi = bisect_left(self.ts, next_end_ns)
        k = max(lo, hi - self.max_messages)
        if k > 0:
            self.nbytes -= sum(len(s) for s in self.texts[:k])
            del self.ts[:k], self.texts[:k]

    def _compact(self) -> None:
        """Drop messages no window can show (a burst): message ``i`` is shown by
        some window only if a window end lies in ``(t_i, t_{i+m}]``."""
        m, ts, w, hop = self.max_messages, self.ts, self.window_ns, self.hop_ns
        keep = [i for i in range(len(ts))
                if i + m >= len(ts) or (ts[i + m] - w) // hop > (ts[i] - w) // hop]
        if len(keep) < len(ts):
            self.texts = [self.texts[i] for i in keep]
            self.ts = [ts[i] for i in keep]
            self.nbytes = sum(len(s) for s in self.texts)


def total_nbytes(buffers: Sequence[VideoBuffer | AudioBuffer | TextBuffer]) -> int:
    return sum(b.nbytes for b in buffers)

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

import numpy as np

from streamfuse.clock import NS_PER_S
from streamfuse.wire import codec
from streamfuse.wire.schema import AudioHeader, FrameHeader, FrameRef, Message


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
        self.encoding = ""
        self.shape: tuple[int, ...] = ()
        self.nbytes = 0

    @property
    def format(self) -> tuple[str, tuple[int, ...]] | None:
        return (self.encoding, self.shape) if self.encoding else None

    def __len__(self) -> int:
        return len(self.ts)

    def push(self, t_ns: int, msg: Message) -> tuple[str | None, int]:
        """Buffer a frame. Returns ``(reject_reason or None, frames dropped by a format
        change)``."""
        h: FrameHeader = msg.header  # type: ignore[assignment]
        dropped = 0
        if h.shape != self.shape or h.encoding != self.encoding:
            dropped = len(self.ts)
            self.ts, self.cells, self.msgs, self.nbytes = [], [], [], 0
            self.encoding, self.shape = h.encoding, h.shape
        ts = self.ts
        lat = self.lattice
        q, r = divmod(t_ns * lat.scale, lat.period)
        cell = q * len(lat.offsets) + bisect_right(lat.offsets, r)
        if not ts or t_ns > ts[-1]:
            cells = self.cells
            if len(ts) >= 2 and cells[-1] == cell and cells[-2] == cell:
                # The newest frame was the middle of three in one cell: never
                # anyone's nearest. Put this one in its place.
                self.nbytes += len(msg.payload[0]) - len(self.msgs[-1].payload[0])
                ts[-1] = t_ns
                self.msgs[-1] = msg
                return None, dropped
            ts.append(t_ns)
            cells.append(cell)
            self.msgs.append(msg)
            self.nbytes += len(msg.payload[0])
            return None, dropped
        i = bisect_left(ts, t_ns)
        if ts[i] == t_ns:
            return "duplicate", dropped
        ts.insert(i, t_ns)
        self.cells.insert(i, cell)
        self.msgs.insert(i, msg)
        self.nbytes += len(msg.payload[0])
        return None, dropped

    def select(self, start_ns: int, window_ns: int,
               n: int) -> tuple[list[np.ndarray | bytes | FrameRef], list[int]]:
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


def _frame(msg: Message) -> np.ndarray | bytes | FrameRef:
    """A raw frame as a zero-copy ``(h, w, 3)`` view, a JPEG as its bytes (never decoded),
    a frame by reference as its descriptor (the aligner never looks at its pixels)."""
    h = msg.header
    assert isinstance(h, FrameHeader)
    buf = msg.payload[0]
    if h.encoding == "shm":
        return codec.frame_ref(msg)
    if h.encoding == "raw":
        return np.frombuffer(buf, dtype=np.uint8).reshape(h.shape)
    return buf if isinstance(buf, bytes) else bytes(buf)


# ----------------------------------------------------------------------------- audio

_SCALE = {"int16": 1.0 / 32768.0, "int32": 1.0 / 2147483648.0}
_F32 = np.dtype(np.float32)


def audio_array(msg: Message) -> np.ndarray | None:
    """A block's interleaved samples, flat ``(frames * channels,)`` float32 (a view
    when it already is float32); None for a sample type the aligner does not convert."""
    h: AudioHeader = msg.header  # type: ignore[assignment]
    if h.dtype == "float32":
        return np.frombuffer(msg.payload[0], dtype=_F32)
    raw = np.frombuffer(msg.payload[0], dtype=h.dtype)
    if h.dtype == "float64":
        return raw.astype(np.float32)
    scale = _SCALE.get(h.dtype)
    if scale is None:
        return None
    return (raw * np.float32(scale)).astype(np.float32)


class AudioBuffer:
    """Audio of one stream on the absolute sample grid, in a ring of ``capacity`` samples.

    A block whose start is within ``snap`` samples of where the previous block
    ended is placed right after it: ADC timestamps jitter by a fraction of a
    millisecond, and taking them literally would leave one-sample holes and
    overlaps (clicks). Further apart, the timestamp wins: a real gap stays a gap
    (zeros), and where blocks overlap a sample comes from the first block that
    brought it (in stream order, the earlier one).

    The ring holds samples ``[lo, lo + capacity)``; ``lo`` follows the next open
    window's start (:meth:`prune`), and cells are zeroed when they leave, so a
    never-written sample reads as 0. ``spans`` lists the written sample ranges
    (sorted, merged: one range while the stream has no gap). A block reaching
    past the ring's end pushes ``lo`` forward (counted in ``overflowed``): the
    aligner sizes the ring so this happens only when windows are not collected.
    """

    def __init__(self, capacity_s: float) -> None:
        self.capacity_s = capacity_s
        self.samplerate = 0
        self.channels = 0
        self.capacity = 0
        self.snap = 0
        self.data = np.zeros((0, 0), np.float32)
        self.flat = self.data.reshape(-1)
        self.spans: list[list[int]] = []  # written [start, end) sample ranges, sorted, disjoint
        self.lo = 0  # lowest sample index the ring holds
        self.expect: int | None = None  # where the next block of this stream should start
        self.overflowed = 0  # samples pushed out of the ring before their windows closed
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self.spans)

    def set_format(self, samplerate: int, channels: int) -> None:
        """(Re)start the ring for this format; what it held is forgotten."""
        self.samplerate, self.channels = samplerate, channels
        self.capacity = max(1, round(self.capacity_s * samplerate))
        self.snap = max(1, samplerate * 2 // 1000)  # 2 ms
        self.data = np.zeros((self.capacity, channels), np.float32)
        self.flat = self.data.reshape(-1)  # the same memory, interleaved
        self.spans = []
        self.expect = None
        self.nbytes = self.data.nbytes

    def place(self, t_ns: int, frames: int) -> int:
        """The start sample of a block of ``frames`` stamped ``t_ns``; call once per block,
        in stream order."""
        a = (t_ns * self.samplerate + NS_PER_S // 2) // NS_PER_S
        e = self.expect
        if e is not None and abs(a - e) <= min(self.snap, frames // 2):
            a = e
        self.expect = a + frames
        return a

    def push(self, a: int, samples: np.ndarray) -> str | None:
        """Write interleaved float32 ``samples`` (``frames * channels``) starting at
        sample ``a``; returns "duplicate" when every sample was there already."""
        ch, cap, spans = self.channels, self.capacity, self.spans
        n = len(samples) // ch
        end = a + n
        if spans and a >= spans[-1][1] and end <= self.lo + cap:
            i = a % cap
            if i + n <= cap:  # the usual case: after everything written, no wrap
                self.flat[i * ch:(i + n) * ch] = samples
                if spans[-1][1] == a:
                    spans[-1][1] = end
                else:
                    spans.append([a, end])
                return None
        if not spans:
            self.lo = max(self.lo, a)
        if a < self.lo:
            samples = samples[(self.lo - a) * ch:]
            a = self.lo
            if a >= end:
                return "duplicate"
        if end > self.lo + cap:
            self.overflowed += end - cap - self.lo
            self.prune(end - cap)
        fresh = _subtract(a, end, spans)
        if not fresh:
            return "duplicate"
        for x, y in fresh:
            self._write((x % cap) * ch, samples[(x - a) * ch:(y - a) * ch])
        self.spans = _union(spans, a, end)
        return None

    def _write(self, i: int, values: np.ndarray) -> None:
        """Write flat ``values`` at flat ring offset ``i``, wrapping around."""
        size = len(self.flat)
        first = min(len(values), size - i)
        self.flat[i:i + first] = values[:first]
        if first < len(values):
            self.flat[:len(values) - first] = values[first:]

    def _clear(self, i: int, n: int) -> None:
        size = len(self.flat)
        first = min(n, size - i)
        self.flat[i:i + first] = 0.0
        if first < n:
            self.flat[:n - first] = 0.0

    def assemble(self, s0: int, n: int) -> tuple[np.ndarray, int]:
        """Samples ``[s0, s0 + n)`` as a new ``(n, channels)`` float32 array (zeros
        where no block was) and how many of them came from blocks."""
        out = np.zeros((n, self.channels), dtype=np.float32)
        spans = self.spans
        if not spans:
            return out, 0
        a, b = max(s0, self.lo), min(s0 + n, spans[-1][1], self.lo + self.capacity)
        if b <= a:
            return out, 0
        ch, cap = self.channels, self.capacity
        i, m = a % cap, b - a
        first = min(m, cap - i)
        flat = out.reshape(-1)
        o = (a - s0) * ch
        flat[o:o + first * ch] = self.flat[i * ch:(i + first) * ch]  # unwritten samples are zeros
        if first < m:
            flat[o + first * ch:o + m * ch] = self.flat[:(m - first) * ch]
        covered = sum(min(y, s0 + n) - max(x, s0) for x, y in spans if y > s0 and x < s0 + n)
        return out, covered

    def first_index(self) -> int | None:
        """The first sample held (None: nothing held)."""
        return max(self.spans[0][0], self.lo) if self.spans else None

    def end_index(self) -> int | None:
        return self.spans[-1][1] if self.spans else None

    def prune(self, s0: int) -> None:
        """Forget samples before ``s0``, zeroing their ring cells for reuse."""
        if s0 <= self.lo:
            return
        spans = self.spans
        if spans:
            # Zero only what was written (sample ranges within [lo, s0)).
            ch, cap = self.channels, self.capacity
            for x, y in spans:
                if x >= s0:
                    break
                x, y = max(x, self.lo), min(y, s0)
                for k in range(x, y, cap):  # at most one lap per call in practice
                    m = min(y - k, cap)
                    self._clear((k % cap) * ch, m * ch)
            k = 0
            while k < len(spans) and spans[k][1] <= s0:
                k += 1
            del spans[:k]
            if spans and spans[0][0] < s0:
                spans[0][0] = s0
        self.lo = s0


def _subtract(a: int, b: int, spans: list[list[int]]) -> list[tuple[int, int]]:
    """The parts of ``[a, b)`` not covered by ``spans`` (sorted, disjoint)."""
    out = []
    x = a
    for s, e in spans[bisect_right([sp[1] for sp in spans], a):] if len(spans) > 8 else spans:
        if e <= x:
            continue
        if s >= b:
            break
        if s > x:
            out.append((x, s))
        x = max(x, e)
        if x >= b:
            break
    if x < b:
        out.append((x, b))
    return out


def _union(spans: list[list[int]], a: int, b: int) -> list[list[int]]:
    """``spans`` with ``[a, b)`` added, merged."""
    out: list[list[int]] = []
    placed = False
    for s, e in spans:
        if e < a:
            out.append([s, e])
        elif s > b:
            if not placed:
                out.append([a, b])
                placed = True
            out.append([s, e])
        else:
            a, b = min(a, s), max(b, e)
    if not placed:
        out.append([a, b])
    return out


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

"""The aligner core: cut each source's streams into windows (docs/architecture.md, "Time").

Pure: no sockets, no clocks, no globals. The node (or the trainer) calls
``push(msg, recv_ns)`` for every message and ``pop_ready(now_ns)`` on arrival
and on a timer; both times come from the caller.

Rules, per source (each source is aligned on its own):

- Windows are ``[k * hop, k * hop + window)`` on the epoch clock; ``seq = k``.
- The source's clock: ``now_src = newest t_ns + (now_ns - recv_ns of that newest)``.
  While the source's video or audio is alive (some arrived within
  ``dead_after_ms`` on the local clock) only they set "newest": text and
  heartbeats carry whatever stamp their sender chose, and a chain of them, each
  just inside the future bound, could otherwise walk the clock anywhere.
- A stream's *watermark* is the newest ``t_ns`` it has sent (data or heartbeat;
  the end of the block for audio). A stream is *dead* once its watermark is
  ``dead_after_ms`` behind ``now_src``; a stream never seen is dead once the
  source has been up that long.
- Window ``k`` closes when every *holding* stream has a watermark ``>= end``,
  or when ``now_src >= end + max_lateness``. Holding: a required stream
  (``align.required``) that is not dead, seen or not yet; an optional stream
  that has been seen and is not dead. With no holding stream only the lateness
  bound closes windows.
- Contents depend only on the messages, never on when the window closed, so
  the same messages make the same windows live, in a replay and in training:
  video, the frame nearest each of the ``n = frames_per_window`` instants
  ``start + (i + 0.5) * window / n`` among the frames in the window (ties go to
  the earlier frame; a frame repeats when there are fewer; none: absent);
  audio, the ``window * samplerate`` samples of the window on the absolute
  sample grid (a block stamped within 2 ms of where the previous one ended
  follows it seamlessly; gaps are zeros, ``audio_coverage`` the fraction
  present; where blocks overlap, the first block keeps its samples);
  text, the newest ``max_text_messages`` with ``t_ns`` in
  ``[end - text_context, end)``, oldest first. This holds as long as each
  stream arrives in order and before its windows close: a stream that does
  not hold windows (dead, or optional and not heard from yet) may see its
  first messages miss windows live that they reach offline.
- A window in which no stream is present is not emitted.
- Memory: buffers keep only what open windows can still show (see
  :mod:`streamfuse.align.buffers`); audio lives in a fixed ring per stream. A
  source that has sent nothing for ``FORGET_AFTER_NS`` (local clock) and holds no
  data is forgotten, all but the ranges of windows it emitted: names a publisher
  invents cost nothing once they fall silent, and a source that comes back starts
  afresh without answering any window twice. Those ranges are kept for the
  :data:`FORGOTTEN_KEPT` sources forgotten most recently (a configured source's
  always): a source that comes back before that many other sources were forgotten
  after it answers no window twice; one that comes back later may answer again
  windows it answered before it was forgotten. ``stats`` are keyed by
  :attr:`Aligner.names`: the configured sources and the first
  :data:`~streamfuse.names.MAX_NAMES` other names have their own counters, later
  names share :data:`~streamfuse.names.OTHER`'s (windows keep their own names).
- Late data (``t_ns`` before the end of a closed window) is counted per stream;
  it is still used by the open windows it falls in, else dropped.
- Timestamps outside the plausible range of the wire (2000 to 2200, see
  :mod:`streamfuse.wire.codec`) are counted ("time") and dropped before they
  touch any state, whoever built the message.
- Timestamps more than ``window + max_lateness`` ahead of ``now_src`` ("future")
  or behind it ("past") are counted and dropped, so one bad clock neither grows
  the buffers nor closes everyone's windows early.
- Resync. A source's timeline moves only on sustained evidence from its own
  data: rejected video or audio messages ("future" or "past") that follow one
  new timeline without a break longer than a hop, both in their stamps and in
  their arrival, for at least ``dead_after_ms`` of each, with no video or audio
  accepted on the old timeline meanwhile. Text and heartbeats never count as
  evidence (a text stamp is a receive time anyone can set), and neither does a
  burst sent at once, however far apart its stamps. Then the open windows of the
  old timeline are closed with what they hold, the source restarts on the new
  timeline (the messages that proved it are gone), and ``stats.resyncs`` and
  :attr:`Aligner.resync_events` record it. A source never emits a window it
  has emitted before: the windows each past timeline emitted are remembered (a
  bounded list of ranges of ``k``) and skipped (``stats.repeated``), so a looped
  replay without re-stamping answers its first pass only. A live looped replay
  should re-stamp (``streamfuse replay --restamp``); a replay faster than real
  time that loops without it proves no new timeline and is dropped as "past",
  and a source that sends only text keeps the timeline it started on.
"""

from __future__ import annotations

import heapq
import itertools
from array import array
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from streamfuse.align.buffers import (
    AudioBuffer,
    FrameLattice,
    TextBuffer,
    VideoBuffer,
    audio_array,
    sample_index,
    sample_time_ns,
)
from streamfuse.clock import NS_PER_MS, NS_PER_S
from streamfuse.config import AlignConfig
from streamfuse.names import NameTable, put_recent
from streamfuse.wire.codec import T_MAX_NS, T_MIN_NS
from streamfuse.wire.schema import (
    AudioHeader,
    FrameHeader,
    HeartbeatHeader,
    Message,
    TextHeader,
    Window,
)

STREAMS = ("video", "audio", "text")
_HEADER_OF = {"video": FrameHeader, "audio": AudioHeader, "text": TextHeader}
_NEG_INF = -(1 << 126)
_POS_INF = 1 << 126
_MAX_ANSWERED = 32  # ranges of emitted windows remembered per source across resyncs
# Forgotten sources whose emitted ranges are kept (least recently forgotten dropped first).
# An entry, packed as int64s, is ~180 bytes (name and one range; ~680 with _MAX_ANSWERED
# ranges after resyncs): 12 MB at the cap, 44 MB at worst, about what one or four sources'
# aligner buffers hold (docs/benchmarks.md, 11.3 MB), while only a publisher inventing tens of
# thousands of names can push a real source out: a deployment has a few to a few dozen
# sources, and a source is forgotten only after FORGET_AFTER_NS of silence.
FORGOTTEN_KEPT = 65_536
_MAX_EVENTS = 64  # resyncs kept until taken
FORGET_AFTER_NS = 60 * NS_PER_S  # silence after which an idle source's state is freed
_SWEEP_EVERY_NS = NS_PER_S  # how often pop_ready looks for such sources


@dataclass(frozen=True)
class Resync:
    """A source moved to a new timeline: ``from_ns`` its clock before, ``to_ns``
    the stamp of the message that completed the evidence (a ``stream`` message)."""

    source: str
    stream: str
    from_ns: int
    to_ns: int


@dataclass
class AlignStats:
    """Counters the node turns into metrics (plain integers on the hot path).

    Keys: ``source`` is the source's key in :attr:`Aligner.names` (its name, or
    ``_other`` for names beyond the table's cap). ``windows[source]``; ``absent``,
    ``late``, ``restarts`` ``[(source, stream)]``; ``rejected[(source, stream,
    reason)]`` with reason in ``future``, ``past``, ``samplerate``, ``channels``,
    ``dtype``, ``kind``, ``duplicate``, ``format_change``, ``time``; ``coverage_sum``
    / ``coverage_n`` per source (mean audio coverage of windows with audio); ``resyncs[source]``;
    ``repeated[source]``: windows not emitted because an earlier timeline did.
    """

    windows: Counter[str] = field(default_factory=Counter)
    absent: Counter[tuple[str, str]] = field(default_factory=Counter)
    late: Counter[tuple[str, str]] = field(default_factory=Counter)
    rejected: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    restarts: Counter[tuple[str, str]] = field(default_factory=Counter)
    resyncs: Counter[str] = field(default_factory=Counter)
    repeated: Counter[str] = field(default_factory=Counter)
    coverage_sum: Counter[str] = field(default_factory=Counter)
    coverage_n: Counter[str] = field(default_factory=Counter)
    _bytes: Callable[[], int] = field(default=lambda: 0, repr=False)

    def buffered_bytes(self) -> int:
        """Bytes the buffers hold now (frame payloads, audio samples, text)."""
        return self._bytes()


class _Stream:
    __slots__ = ("wm", "seen", "last_seq")

    def __init__(self) -> None:
        self.wm = _NEG_INF  # watermark, epoch ns
        self.seen = False
        self.last_seq = -1


class _Source:
    """One source's state: its clock, streams, buffers and next window."""

    def __init__(self, name: str, al: Aligner, answered: list[tuple[int, int]]) -> None:
        self.name = name
        self.key = al.names(name)  # its key in al.stats
        self.streams = {s: _Stream() for s in STREAMS}
        self.video = VideoBuffer(al._lattice)
        self.audio = AudioBuffer(al.audio_ring_s)
        self.text = TextBuffer(window_ns=al.window_ns, hop_ns=al.hop_ns,
                               context_ns=al.text_context_ns, max_messages=al.cfg.max_text_messages)
        self.first_t: int | None = None
        self.newest_t = _NEG_INF
        self.newest_recv = 0
        self.last_recv = 0  # local arrival of its newest message of any kind
        self.data_recv = _NEG_INF  # local arrival of the newest accepted video or audio
        self.next_k: int | None = None  # first window not closed yet
        self.next_end: int | None = None  # its end
        self.closed_end: int | None = None  # end of the last closed window
        # A timeline the rejected data follows: first and last stamp, first and last arrival.
        self.run_first: int | None = None
        self.run_last = self.run_recv0 = self.run_recv = 0
        self.answered = answered  # (first k, last k) emitted by earlier timelines; shared
        self.k_lo: int | None = None  # windows emitted on this timeline: k_lo..k_hi
        self.k_hi = 0
        self.dirty = False  # queued for a close check at the next pop_ready
        self.next_check = _NEG_INF  # source-clock instant the close rule may change by itself
        self.timer_local = _POS_INF  # local-clock instant of its pending timer

    def now_src(self, now_ns: int) -> int:
        return self.newest_t + max(0, now_ns - self.newest_recv)

    def nbytes(self) -> int:
        return self.video.nbytes + self.audio.nbytes + self.text.nbytes


class Aligner:
    """Aligns many sources at once; see the module docstring for the rules.

    ``sources``: align only these source names (None: every source seen); they
    always have stats of their own (:attr:`names`).
    ``samplerates``: expected audio rate per source; blocks at another rate are
    rejected. A source not listed takes the rate of its first block.
    """

    def __init__(self, cfg: AlignConfig, *, sources: Iterable[str] | None = None,
                 samplerates: dict[str, int] | None = None) -> None:
        self.cfg = cfg
        self.window_ns = cfg.window_ms * NS_PER_MS
        self.hop_ns = cfg.hop_ms * NS_PER_MS
        self.lateness_ns = cfg.max_lateness_ms * NS_PER_MS
        self.text_context_ns = cfg.text_context_ms * NS_PER_MS
        self.dead_ns = cfg.dead_after_ms * NS_PER_MS
        self.horizon_ns = self.window_ns + self.lateness_ns
        # Audio from the next open window's start to the farthest accepted future block.
        self.audio_ring_s = (2 * self.horizon_ns + self.window_ns + self.hop_ns) / NS_PER_S
        self.required = frozenset(cfg.required)
        self.only = frozenset(sources) if sources is not None else None
        self.names = NameTable("source", sorted(self.only or ()))  # keys of self.stats
        self.samplerates = dict(samplerates or {})
        self._lattice = FrameLattice(self.window_ns, self.hop_ns, cfg.frames_per_window)
        self._sources: dict[str, _Source] = {}
        # Ranges of emitted windows of each source kept (and of configured ones forgotten),
        # and of the FORGOTTEN_KEPT other sources forgotten most recently (oldest first).
        self._answered: dict[str, list[tuple[int, int]]] = {}
        self._forgotten: dict[str, array[int]] = {}  # packed: lo, hi, lo, hi, ...
        self.resync_events: list[Resync] = []  # newest last; see take_resyncs
        self.run_gap_ns = self.hop_ns  # the longest break a resync's evidence may have
        self._pending: list[Window] = []
        self._dirty: list[_Source] = []  # sources whose watermarks crossed their next window's end
        self._timers: list[tuple[int, int, _Source]] = []  # (local deadline, tie, source) heap
        self._tie = itertools.count()
        self._next_sweep = _NEG_INF
        self.stats = AlignStats(_bytes=self.buffered_bytes)

    # ------------------------------------------------------------------ input

    def push(self, msg: Message, recv_ns: int) -> None:
        """Take one message; ``recv_ns`` is the local clock when it arrived."""
        h = msg.header
        stream = h.stream
        if stream not in _HEADER_OF or (self.only is not None and h.source not in self.only):
            return
        if not T_MIN_NS <= h.t_ns < T_MAX_NS:
            self.stats.rejected[(self.names(h.source), stream, "time")] += 1
            return
        src = self._sources.get(h.source)
        if src is None:
            answered = self._answered.get(h.source)
            if answered is None:
                packed = self._forgotten.pop(h.source, None)
                answered = list(zip(packed[::2], packed[1::2], strict=True)) if packed else []
                self._answered[h.source] = answered
            src = self._sources[h.source] = _Source(h.source, self, answered)
        src.last_recv = max(src.last_recv, recv_ns)
        self._push(src, msg, recv_ns)

    def _push(self, src: _Source, msg: Message, recv_ns: int) -> None:
        h = msg.header
        stream, t = h.stream, h.t_ns
        kind = type(h)
        heartbeat = kind is HeartbeatHeader
        if not heartbeat and kind is not _HEADER_OF[stream]:
            self.stats.rejected[(src.key, stream, "kind")] += 1
            return
        if src.first_t is not None:
            now_src = src.newest_t + (recv_ns - src.newest_recv if recv_ns > src.newest_recv else 0)
            if t > now_src + self.horizon_ns:
                return self._reject(src, msg, recv_ns, "future")
            if t < now_src - self.horizon_ns:
                return self._reject(src, msg, recv_ns, "past")
        st = src.streams[stream]
        if heartbeat:
            st.seen = True
            if t > st.wm:
                st.wm = t
            return self._accepted(src, st, t, recv_ns, data=False)
        if h.seq < st.last_seq:
            self.stats.restarts[(src.key, stream)] += 1  # a capture restarted its counter
        st.last_seq = h.seq
        if kind is FrameHeader:
            keep, wm = self._push_frame(src, msg, t)
        elif kind is AudioHeader:
            keep, wm = self._push_audio(src, msg, t)
        else:
            keep, wm = self._push_text(src, msg, t)
        if not keep:
            return  # rejected and counted, or late and no open window wants it
        st.seen = True
        if wm > st.wm:
            st.wm = wm
        if src.closed_end is None:
            k = (t - self.window_ns) // self.hop_ns + 1  # first window this data is in
            if src.next_k is None or k < src.next_k:
                src.next_k = k
                src.next_end = k * self.hop_ns + self.window_ns
                self._mark(src)
        self._accepted(src, st, t, recv_ns, data=kind is not TextHeader)

    def _late(self, src: _Source, stream: str, t: int) -> bool:
        if src.closed_end is not None and t < src.closed_end:
            self.stats.late[(src.key, stream)] += 1
            return True
        return False

    def _next_start(self, src: _Source) -> int:
        assert src.next_k is not None
        return src.next_k * self.hop_ns

    def _push_frame(self, src: _Source, msg: Message, t: int) -> tuple[bool | None, int]:
        if self._late(src, "video", t) and t < self._next_start(src):
            return False, t
        reason, dropped = src.video.push(t, msg)
        if dropped:
            self.stats.rejected[(src.key, "video", "format_change")] += dropped
        if reason:
            self.stats.rejected[(src.key, "video", reason)] += 1
            return None, t
        return True, t

    def _push_audio(self, src: _Source, msg: Message, t: int) -> tuple[bool | None, int]:
        h = msg.header
        assert isinstance(h, AudioHeader)
        buf = src.audio
        if h.samplerate != buf.samplerate or h.channels != buf.channels:
            expected = self.samplerates.get(src.name, 0)
            if buf.samplerate == 0 or (not len(buf) and src.streams["audio"].wm + self.dead_ns < t
                                       and not expected):
                # The first block (or the first after a silence) sets the format.
                buf.set_format(expected or h.samplerate, h.channels)
            if h.samplerate != buf.samplerate:
                self.stats.rejected[(src.key, "audio", "samplerate")] += 1
                return None, t
            if h.channels != buf.channels:
                if len(buf):
                    self.stats.rejected[(src.key, "audio", "channels")] += 1
                    return None, t
                buf.set_format(buf.samplerate, h.channels)
        block = audio_array(msg)
        if block is None:
            self.stats.rejected[(src.key, "audio", "dtype")] += 1
            return None, t
        sr = buf.samplerate
        a = buf.place(t, h.frames)
        end = a + h.frames
        wm = -(-end * NS_PER_S // sr)  # the block's end, rounded up
        if src.closed_end is not None and t < src.closed_end + 2 * self.hop_ns and \
                a < sample_index(src.closed_end, sr):
            self.stats.late[(src.key, "audio")] += 1
            if end <= sample_index(self._next_start(src), sr):
                return False, wm  # nothing left for the open windows
        if buf.push(a, block):
            self.stats.rejected[(src.key, "audio", "duplicate")] += 1
            return None, wm
        return True, wm

    def _push_text(self, src: _Source, msg: Message, t: int) -> tuple[bool | None, int]:
        if self._late(src, "text", t):
            assert src.next_k is not None
            if t < src.next_k * self.hop_ns + self.window_ns - self.text_context_ns:
                return False, t
        src.text.push(t, msg.text())
        return True, t

    def _mark(self, src: _Source) -> None:
        if not src.dirty:
            src.dirty = True
            self._dirty.append(src)

    def _accepted(self, src: _Source, st: _Stream, t: int, recv_ns: int, *, data: bool) -> None:
        """Bookkeeping after any accepted message: clock, close checks, timer."""
        if src.first_t is None:
            src.first_t = t
        if t > src.newest_t and (data or recv_ns - src.data_recv > self.dead_ns):
            src.newest_t, src.newest_recv = t, recv_ns
        if data:
            src.data_recv = recv_ns
            src.run_first = None  # the old timeline still carries data: no resync evidence
        if src.next_end is None:
            return
        if st.wm >= src.next_end:
            self._mark(src)  # the next window may close on watermarks now
        death = st.wm + self.dead_ns + 1  # when this stream stops holding windows
        if death < src.next_check:
            src.next_check = death
        # The source clock's offset to ours moved: the timer may be due earlier.
        local = src.next_check - src.newest_t + src.newest_recv
        if local < src.timer_local:
            src.timer_local = local
            heapq.heappush(self._timers, (local, next(self._tie), src))

    def _reject(self, src: _Source, msg: Message, recv_ns: int, reason: str) -> None:
        """Count a message far from the source's clock; resync the source once its
        data has followed a new timeline long enough (see the module docstring)."""
        h = msg.header
        self.stats.rejected[(src.key, h.stream, reason)] += 1
        if type(h) is not FrameHeader and type(h) is not AudioHeader:
            return  # text and heartbeats are no evidence that the timeline moved
        t, gap = h.t_ns, self.run_gap_ns
        if (src.run_first is None or not src.run_last - gap <= t <= src.run_last + gap
                or recv_ns - src.run_recv > gap):
            src.run_first = src.run_last = t
            src.run_recv0 = src.run_recv = recv_ns
            return
        src.run_last = max(src.run_last, t)
        src.run_recv = max(src.run_recv, recv_ns)
        dead = self.dead_ns
        if src.run_last - src.run_first >= dead and src.run_recv - src.run_recv0 >= dead:
            self._resync(src, msg, recv_ns)

    def _resync(self, src: _Source, msg: Message, recv_ns: int) -> None:
        """Close the old timeline's windows and restart ``src`` on the new one."""
        self.stats.resyncs[src.key] += 1
        self.resync_events.append(Resync(src.name, msg.header.stream, src.now_src(recv_ns),
                                         msg.header.t_ns))
        del self.resync_events[:-_MAX_EVENTS]  # nobody may be taking them (the trainer)
        self._pending.extend(self._close(src, None))
        if src.k_lo is not None:
            _remember(src.answered, src.k_lo, src.k_hi)
        fresh = self._sources[src.name] = _Source(src.name, self, src.answered)
        self._push(fresh, msg, recv_ns)

    # ------------------------------------------------------------------ output

    def pop_ready(self, now_ns: int) -> list[Window]:
        """Windows that close by ``now_ns`` (the local clock), per source in time order."""
        out = self._pending
        self._pending = []
        if self._dirty:
            dirty, self._dirty = self._dirty, []
            for src in dirty:
                src.dirty = False
                self._check(src, now_ns, out)
        timers = self._timers
        while timers and timers[0][0] <= now_ns:
            local, _, src = heapq.heappop(timers)
            if local == src.timer_local:  # else superseded by an earlier timer
                src.timer_local = _POS_INF
                self._check(src, now_ns, out)
        if now_ns >= self._next_sweep:
            self._next_sweep = now_ns + _SWEEP_EVERY_NS
            self._forget_idle(now_ns)
        return out

    def _forget_idle(self, now_ns: int) -> None:
        """Free the sources silent for ``FORGET_AFTER_NS`` that hold no data; keep the
        ranges they emitted (configured sources' for good, others' among the
        :data:`FORGOTTEN_KEPT` forgotten most recently)."""
        for name, src in list(self._sources.items()):
            if now_ns - src.last_recv < FORGET_AFTER_NS or self._first_data_k(src) is not None:
                continue
            del self._sources[name]
            if src.k_lo is not None:
                _remember(src.answered, src.k_lo, src.k_hi)
            if self.only is not None and src.answered:
                continue  # a configured source: its ranges are kept for good
            del self._answered[name]
            if src.answered:
                packed = array("q", [k for r in src.answered for k in r])
                put_recent(self._forgotten, name, packed, FORGOTTEN_KEPT)

    def _check(self, src: _Source, now_ns: int, out: list[Window]) -> None:
        """Close what may close at ``now_ns`` and set the source's next timer."""
        if self._sources.get(src.name) is not src or src.next_k is None:
            return  # replaced by a resync, or no data yet
        now_src = src.now_src(now_ns)
        out.extend(self._close(src, now_src))
        if self._first_data_k(src) is None:
            return  # nothing buffered: no timer until data comes (see _accepted)
        local = src.next_check - src.newest_t + src.newest_recv
        if local < src.timer_local:
            src.timer_local = local
            heapq.heappush(self._timers, (local, next(self._tie), src))

    def flush(self) -> list[Window]:
        """Close every open window that holds data (the end of a recording)."""
        out = self._pending
        self._pending = []
        for src in self._sources.values():
            out.extend(self._close(src, None))
        return out

    def take_resyncs(self) -> list[Resync]:
        """The resyncs since the last call, oldest first."""
        out, self.resync_events = self.resync_events, []
        return out

    def buffered_bytes(self) -> int:
        return sum(s.nbytes() for s in self._sources.values())

    def _close_bound(self, src: _Source, now_src: int) -> int:
        """The latest window end that may close now; also sets ``src.next_check``."""
        bound = now_src - self.lateness_ns
        hold = None
        changes = []  # source-clock instants at which a stream stops holding
        for name, st in src.streams.items():
            if st.seen:
                if now_src - st.wm > self.dead_ns:
                    continue
                changes.append(st.wm + self.dead_ns + 1)
                wm = st.wm
            elif (name in self.required and src.first_t is not None
                  and now_src - src.first_t <= self.dead_ns):
                changes.append(src.first_t + self.dead_ns + 1)
                wm = _NEG_INF
            else:
                continue
            hold = wm if hold is None else min(hold, wm)
        if hold is not None and hold > bound:
            bound = hold
        assert src.next_k is not None
        next_end = (max(src.next_k, (bound - self.window_ns) // self.hop_ns + 1) * self.hop_ns
                    + self.window_ns)
        src.next_check = min([next_end + self.lateness_ns, *changes])
        return bound

    def _first_data_k(self, src: _Source) -> int | None:
        """The first window that may hold buffered data (never too late)."""
        ts = []
        v = src.video.first_t()
        if v is not None:
            ts.append(v)
        a = src.audio.first_index()
        if a is not None:
            ts.append(sample_time_ns(a - 1, src.audio.samplerate))
        x = src.text.first_t()
        if x is not None:
            ts.append(x)
        if not ts:
            return None
        return (min(ts) - self.window_ns) // self.hop_ns + 1

    def _last_data_k(self, src: _Source) -> int | None:
        """The last window that may hold buffered data (never too early)."""
        ks = []
        v = src.video.last_t()
        if v is not None:
            ks.append(v // self.hop_ns)
        e = src.audio.end_index()
        if e is not None:
            ks.append(sample_time_ns(e + 1, src.audio.samplerate) // self.hop_ns)
        x = src.text.last_t()
        if x is not None:
            ks.append((x + self.text_context_ns - self.window_ns) // self.hop_ns)
        return max(ks) if ks else None

    def _close(self, src: _Source, now_src: int | None) -> list[Window]:
        """Close the windows of ``src`` that may close at ``now_src`` (None: all)."""
        if src.next_k is None:
            return []
        if now_src is None:
            last = self._last_data_k(src)
            if last is None:
                return []
            k_max = last
            close_ns = max(src.newest_t, last * self.hop_ns + self.window_ns)
        else:
            k_max = (self._close_bound(src, now_src) - self.window_ns) // self.hop_ns
            close_ns = now_src
        out: list[Window] = []
        while src.next_k <= k_max:
            first = self._first_data_k(src)
            if first is None:
                self._advance(src, k_max + 1)
                break
            if first > src.next_k:  # skip empty windows without building them
                self._advance(src, min(first, k_max + 1))
                continue
            if src.answered:
                done = _answered_until(src.answered, src.next_k)
                if done is not None:  # an earlier timeline emitted these windows
                    skip_to = min(done + 1, k_max + 1)
                    self.stats.repeated[src.key] += skip_to - src.next_k
                    self._advance(src, skip_to)
                    continue
            w = self._build(src, src.next_k, close_ns)
            self._advance(src, src.next_k + 1)
            if w is not None:
                out.append(w)
        return out

    def _advance(self, src: _Source, k: int) -> None:
        """Mark windows before ``k`` closed and forget what only they needed."""
        src.next_k = k
        start = k * self.hop_ns
        src.next_end = start + self.window_ns
        src.closed_end = start - self.hop_ns + self.window_ns
        src.video.prune(start)
        if src.audio.samplerate:
            src.audio.prune(sample_index(start, src.audio.samplerate))
        src.text.prune(start + self.window_ns)

    def _build(self, src: _Source, k: int, close_ns: int) -> Window | None:
        start = k * self.hop_ns
        end = start + self.window_ns
        cfg = self.cfg
        frames, frame_t = src.video.select(start, self.window_ns, cfg.frames_per_window)
        audio = None
        coverage = 0.0
        sr = src.audio.samplerate
        if len(src.audio):
            s0 = sample_index(start, sr)
            n = sample_index(end, sr) - s0
            samples, covered = src.audio.assemble(s0, n)
            if covered:
                audio = samples
                coverage = covered / n
        texts, text_t = src.text.select(end)
        present = {"video": bool(frames), "audio": audio is not None, "text": bool(texts)}
        if not (frames or texts or audio is not None):
            return None
        name, key = src.name, src.key
        if src.k_lo is None:
            src.k_lo = k
        src.k_hi = k
        stats = self.stats
        stats.windows[key] += 1
        for s, st in src.streams.items():
            if st.seen and not present[s]:
                stats.absent[(key, s)] += 1
        if audio is not None:
            stats.coverage_sum[key] += coverage  # type: ignore[assignment]
            stats.coverage_n[key] += 1
        return Window(
            source=name, seq=k, t_start_ns=start, t_end_ns=end, present=present,
            frames=frames, frame_encoding=src.video.encoding if frames else "raw",
            frame_t_ns=frame_t, frame_shape=src.video.shape if frames else (), audio=audio,
            samplerate=sr if audio is not None else 0,
            audio_coverage=coverage, texts=texts, text_t_ns=text_t, close_ns=close_ns,
        )


def _answered_until(ranges: list[tuple[int, int]], k: int) -> int | None:
    """The last k of the remembered range holding ``k`` (None: ``k`` was never emitted)."""
    for lo, hi in ranges:
        if lo <= k <= hi:
            return hi
    return None


def _remember(ranges: list[tuple[int, int]], lo: int, hi: int) -> None:
    """Add ``[lo, hi]`` to ``ranges`` (sorted, merged). Beyond ``_MAX_ANSWERED`` ranges
    the two closest merge: a few never-emitted windows are then skipped, but no
    window is ever emitted twice and the list stays bounded."""
    ranges.append((lo, hi))
    ranges.sort()
    merged: list[tuple[int, int]] = []
    for a, b in ranges:
        if merged and a <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    while len(merged) > _MAX_ANSWERED:
        i = min(range(len(merged) - 1), key=lambda j: merged[j + 1][0] - merged[j][1])
        merged[i:i + 2] = [(merged[i][0], merged[i + 1][1])]
    ranges[:] = merged

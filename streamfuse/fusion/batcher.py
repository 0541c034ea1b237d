"""Dynamic batching across sources (docs/architecture.md): pure, clock-free.

Public API:

- :class:`Batcher` ``(max_batch, max_delay_ns, horizon_ns=...)``:
    * ``push(window, now_ns)`` — queue a window that arrived at ``now_ns``;
    * ``pop_batch(now_ns) -> list[Pending]`` — the oldest ``max_batch`` windows
      once there are ``max_batch`` of them, or the oldest has waited
      ``max_delay_ns``, or every *expected* source has a window queued (see
      below); else ``[]``;
    * ``drain() -> list[Pending]`` — the oldest ``max_batch`` regardless of age
      (shutdown: everything received is answered);
    * ``next_deadline() -> int | None`` — when the oldest window's wait runs out
      (the node polls its socket until then);
    * ``room`` — how many more windows fit before a full batch; the node reads
      no more than this from its socket, so a slow model holds windows back in
      ZeroMQ (and the aligner's PUSH moves on to another worker) instead of
      growing a queue here.
- :class:`Pending` — a window with its arrival instant ``arrived_ns``.

Waiting only pays when more windows are coming. The aligner closes the windows
of every source on the same grid at about the same moment, so the batcher
expects a window from each source whose latest window started within
``horizon_ns`` of the oldest queued one; once each of them has a window queued
(at or after the oldest one's start) the batch goes at once. One source never
waits; a source that stopped costs at most ``max_delay_ns`` until it falls out
of the horizon.

Windows are answered in arrival order; a window whose key ``(source,
t_start_ns)`` is already queued is refused (``push`` returns False) so nothing
is answered twice.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from streamfuse.wire.schema import Window


@dataclass(frozen=True)
class Pending:
    """A queued window and the instant (epoch ns, worker clock) it arrived."""

    window: Window
    arrived_ns: int


class Batcher:
    """Collects windows into batches of at most ``max_batch``; see module docstring."""

    def __init__(self, max_batch: int, max_delay_ns: int, *,
                 horizon_ns: int = 2_000_000_000) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_delay_ns < 0:
            raise ValueError(f"max_delay_ns must be >= 0, got {max_delay_ns}")
        self.max_batch = max_batch
        self.max_delay_ns = max_delay_ns
        self.horizon_ns = horizon_ns
        self._queue: deque[Pending] = deque()
        self._keys: set[tuple[str, int]] = set()
        # source -> newest t_start_ns pushed (bounded by the horizon)
        self._latest: dict[str, int] = {}
        self._queued: dict[str, int] = {}  # source -> newest t_start_ns now queued

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def room(self) -> int:
        return max(0, self.max_batch - len(self._queue))

    def push(self, window: Window, now_ns: int) -> bool:
        """Queue ``window``; False (and nothing queued) if its key is already queued."""
        if window.key in self._keys:
            return False
        self._keys.add(window.key)
        self._queue.append(Pending(window, now_ns))
        src, t = window.source, window.t_start_ns
        self._latest[src] = max(t, self._latest.get(src, t))
        self._queued[src] = max(t, self._queued.get(src, t))
        return True

    def _all_expected_queued(self) -> bool:
        """Every source heard within the horizon has a window at or after the oldest's start."""
        t0 = self._queue[0].window.t_start_ns
        for src, latest in list(self._latest.items()):
            if latest < t0 - self.horizon_ns:
                del self._latest[src]  # gone quiet: no longer expected (and the dict stays bounded)
            elif self._queued.get(src, t0 - 1) < t0:
                return False
        return True

    def next_deadline(self) -> int | None:
        """Epoch ns at which the oldest queued window must be sent, or None if empty."""
        return self._queue[0].arrived_ns + self.max_delay_ns if self._queue else None

    def ready(self, now_ns: int) -> bool:
        if not self._queue:
            return False
        return (len(self._queue) >= self.max_batch
                or now_ns >= self._queue[0].arrived_ns + self.max_delay_ns
                or self._all_expected_queued())

    def pop_batch(self, now_ns: int) -> list[Pending]:
        """The next batch if one is due at ``now_ns`` (see module docstring), else ``[]``."""
        return self.drain() if self.ready(now_ns) else []

    def drain(self) -> list[Pending]:
        """The oldest ``max_batch`` queued windows, due or not."""
        out = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
        for p in out:
            self._keys.discard(p.window.key)
        self._queued = {}
        for p in self._queue:
            src, t = p.window.source, p.window.t_start_ns
            self._queued[src] = max(t, self._queued.get(src, t))
        return out

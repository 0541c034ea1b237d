"""Bounded tables for names a publisher chooses (source names, topics).

Any publisher on the bus may put any source name in a message. Counters, metric
labels and other bookkeeping keyed by such names would grow with every name a
publisher invents, for as long as the daemon runs. :class:`NameTable` bounds them:
the first :data:`MAX_NAMES` distinct names it is asked about keep their own key,
every further name is *folded* into :data:`OTHER`. Names given as ``keep`` (the
configured ``[[sources]]``) always keep their own key. Only keys are folded: what
goes on the wire (windows, classifications, their ``source``) never is.

:func:`put_recent` bounds state that cannot be folded (the last ``seq`` of a topic):
a plain dict kept in order of last use, the least recently used entry dropped
beyond a cap.

Pure: no clocks, no sockets. The log line that says names are being folded is
spaced by count (the first folded name, then each time the count doubles), so
a flood of invented names writes a few dozen lines in a year, not one per name.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TypeVar

from streamfuse.wire import topics

log = logging.getLogger("streamfuse.names")

# Distinct names with a key of their own, per table (per process). Each source label
# value costs some 30 to 60 Prometheus series (its topics' message, drop, gap and reset
# counters, late and absent counts per stream, the coverage histogram's buckets,
# classifications): 256 names stay near 10,000 series, what one scrape target can
# reasonably serve, and are far more sources than one daemon aligns in practice (a few
# to a few dozen), so a deployment never sees its own sources folded.
MAX_NAMES = 256
# The key of every name beyond the cap. A valid source name, so that topic labels built
# from it (``_other/video``) read like any other; configure no source by that name.
OTHER = "_other"
# Folded names remembered (least recently folded dropped first) so that a name that
# keeps coming is counted once: a name counts again only after this many other
# folded names, so ``folded`` is the number of distinct names, approximately.
_RECENT_FOLDED = 4 * MAX_NAMES

K = TypeVar("K")
V = TypeVar("V")


class NameTable:
    """Keys for names: the name itself for ``keep`` and the first ``cap`` distinct
    names looked up (in lookup order, so deterministic), :data:`OTHER` for the rest.

    ``what`` names the table in its log line. ``folded`` counts the names folded (a
    name folded again after :data:`_RECENT_FOLDED` other folded names counts again).
    """

    def __init__(self, what: str, keep: Iterable[str] = (), *, cap: int = MAX_NAMES) -> None:
        self.what = what
        self.cap = cap
        self._keys: dict[str, str] = {n: n for n in keep}
        self._recent: dict[str, bool] = {}
        self.folded = 0
        self._log_at = 1  # the folded count at which the next line is logged

    def __call__(self, name: str) -> str:
        """The key of ``name``: itself, or :data:`OTHER` beyond the cap."""
        key = self._keys.get(name)
        if key is not None:
            return key
        if len(self._keys) < self.cap and name != OTHER:
            self._keys[name] = name
            return name
        self._fold(name)
        return OTHER

    def __len__(self) -> int:
        """Names with a key of their own (``keep`` included)."""
        return len(self._keys)

    def topic(self, t: str) -> str:
        """``t`` with its source name folded: ``room1/video`` or ``_other/video``,
        ``class/room1`` or ``class/_other``. A malformed topic is itself a name."""
        try:
            source, stream = topics.split(t)
        except ValueError:
            return self(t)
        key = self(source)
        return t if key == source else topics.topic(key, stream)

    def _fold(self, name: str) -> None:
        if put_recent(self._recent, name, True, _RECENT_FOLDED):
            return
        self.folded += 1
        if self.folded >= self._log_at:
            self._log_at = 2 * self.folded
            log.warning("more than %d distinct %s names seen: %r and every later new name are "
                        "counted under %r in metrics and statistics (%d folded so far; their "
                        "messages are still handled as before)",
                        self.cap, self.what, name, OTHER, self.folded)


def put_recent(d: dict[K, V], key: K, value: V, cap: int) -> V | None:
    """``d[key] = value`` as ``d``'s most recent entry; returns the value it replaced
    (None: new; values are never None). A new key beyond ``cap`` entries drops the
    least recently put one."""
    old = d.pop(key, None)
    d[key] = value
    if old is None and len(d) > cap:
        del d[next(iter(d))]
    return old

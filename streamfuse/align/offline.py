"""Windows from recorded messages: the trainer's entry point.

The same :class:`~streamfuse.align.window.Aligner` as the live node, driven by
the messages themselves: each message is taken as received at its own
``t_ns``, so ``now`` follows the recording and a window closes as soon as the
recording has moved past it. At the end every open window is flushed. Given
the same messages, the live node (on a replay) and this function make the same
windows (docs/architecture.md: train/serve skew is a bug).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from streamfuse.align.window import Aligner
from streamfuse.config import AlignConfig
from streamfuse.wire.schema import Message, Window


def windows_from_messages(messages: Iterable[Message], cfg: AlignConfig, *,
                          sources: Iterable[str] | None = None,
                          aligner: Aligner | None = None) -> Iterator[Window]:
    """Yield the windows of ``messages`` (in recording order, i.e. by ``t_ns``).

    ``sources``: only these source names (None: all). ``aligner``: an aligner to
    use instead of a new one (to read its ``stats`` afterwards).
    """
    al = aligner if aligner is not None else Aligner(cfg, sources=sources)
    for msg in messages:
        t = msg.header.t_ns
        al.push(msg, t)
        ready = al.pop_ready(t)
        if ready:
            yield from ready
    yield from al.flush()

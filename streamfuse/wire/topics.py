"""Topic names, the one place that knows them (docs/protocol.md, "Topics").

What a source senses is published on ``"<source>/<stream>"`` (``room1/video``,
``room1/label``). What the daemon derives from it is published under a prefix of
its own, ``class/<source>`` and ``shadow/<source>``, so that one prefix
subscription (``class/``) receives every classification and nothing else: ZeroMQ
matches subscriptions by prefix only. Every topic has exactly one spelling:
``split(topic(source, stream)) == (source, stream)``, and ``class``/``shadow`` are
not source names.
"""

from __future__ import annotations

import re

# At most NAME_MAX characters: names are keys of the tables every node keeps per source
# (metric labels, frame rings, MCAP channels), so a publisher may not make one megabytes long.
NAME_MAX = 64
NAME_RE = re.compile(rf"^[a-z0-9_-]{{1,{NAME_MAX}}}$")
CAPTURE_STREAMS = ("video", "audio", "text")
CLASS_STREAM = "class"
SHADOW_STREAM = "shadow"
# Derived streams: published on "<stream>/<source>", never "<source>/<stream>".
DERIVED_STREAMS = (CLASS_STREAM, SHADOW_STREAM)
STREAMS = (*CAPTURE_STREAMS, CLASS_STREAM, "label", SHADOW_STREAM)
WINDOW_STREAM = "window"  # aligner -> worker only, never on the broker
CLASS_PREFIX = f"{CLASS_STREAM}/"
SHADOW_PREFIX = f"{SHADOW_STREAM}/"
# What bus.results serves: what the daemon concludes, never what its sensors capture.
RESULT_PREFIXES = (CLASS_PREFIX,)
RESERVED_SOURCES = DERIVED_STREAMS


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a source name, or None."""
    if not NAME_RE.match(name):
        shown = name if len(name) <= 2 * NAME_MAX else \
            f"{name[:NAME_MAX]}... ({len(name)} characters)"
        return (f"expected a name matching [a-z0-9_-]+ of at most {NAME_MAX} characters, "
                f"got {shown!r}")
    if name in RESERVED_SOURCES:
        return f"{name!r} is reserved (topics {CLASS_PREFIX}<source> and {SHADOW_PREFIX}<source>)"
    return None


def topic(source: str, stream: str) -> str:
    """The topic of ``source``'s ``stream``: ``room1/video``, ``class/room1``."""
    if stream in DERIVED_STREAMS:
        return f"{stream}/{source}"
    return f"{source}/{stream}"


def class_topic(source: str) -> str:
    """Where ``source``'s classifications are published."""
    return f"{CLASS_PREFIX}{source}"


def shadow_topic(source: str) -> str:
    """Where a shadow (candidate) model's answers for ``source`` would be published."""
    return f"{SHADOW_PREFIX}{source}"


def label_topic(source: str) -> str:
    return topic(source, "label")


def is_class_topic(t: str | bytes) -> bool:
    """True for a classification's topic (or a prefix of ``class/`` topics)."""
    if isinstance(t, bytes):
        return t.startswith(b"class/")
    return t.startswith(CLASS_PREFIX)


def is_result_topic(t: str) -> bool:
    """True when ``t`` (a topic or a subscription prefix) is served on bus.results."""
    return any(t.startswith(p) for p in RESULT_PREFIXES)


def split(t: str) -> tuple[str, str]:
    """``"room1/video"`` -> ``("room1", "video")``, ``"class/room1"`` -> ``("room1", "class")``.

    ValueError if malformed, including a derived stream spelled ``room1/class``.
    """
    first, sep, second = t.partition("/")
    if not sep or not NAME_RE.match(first) or not NAME_RE.match(second):
        raise ValueError(f"malformed topic {t!r}")
    if first in DERIVED_STREAMS:
        return second, first
    if second in DERIVED_STREAMS:
        raise ValueError(f"malformed topic {t!r}: {second} is published on {second}/{first}")
    return first, second


def capture_topics(sources: list[str], streams: tuple[str, ...] = CAPTURE_STREAMS) -> list[str]:
    """Topics an aligner subscribes to."""
    return [topic(s, st) for s in sources for st in streams]

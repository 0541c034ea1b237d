"""Topic names: ``"<source>/<stream>"`` (DESIGN.md section 3)."""

from __future__ import annotations

import re

NAME_RE = re.compile(r"^[a-z0-9_-]+$")
CAPTURE_STREAMS = ("video", "audio", "text")
STREAMS = (*CAPTURE_STREAMS, "class", "label")
WINDOW_STREAM = "window"  # aligner -> worker only, never on the broker


def topic(source: str, stream: str) -> str:
    return f"{source}/{stream}"


def split(t: str) -> tuple[str, str]:
    """``"room1/video"`` -> ``("room1", "video")``; ValueError if malformed."""
    source, sep, stream = t.partition("/")
    if not sep or not NAME_RE.match(source) or not NAME_RE.match(stream):
        raise ValueError(f"malformed topic {t!r}")
    return source, stream


def capture_topics(sources: list[str], streams: tuple[str, ...] = CAPTURE_STREAMS) -> list[str]:
    """Topics an aligner subscribes to."""
    return [topic(s, st) for s in sources for st in streams]


def class_topic(source: str) -> str:
    """Where ``source``'s classifications are published (also a subscription prefix)."""
    return topic(source, "class")


def is_class_topic(t: str | bytes) -> bool:
    return (t.decode("utf-8", "replace") if isinstance(t, bytes) else t).endswith("/class")

"""The recordings page: the MCAP files under ``record.path``, read with streamfuse's reader.

Only summaries are read (a finished file's statistics and per-topic spans), never the
messages, so a listing of gigabytes of recordings stays cheap; results are kept per
file until its size or modification time changes. A file still being written has no
summary yet: its time range comes from its chunk headers and its streams are unknown.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from streamfuse.clock import NS_PER_S as NS
from streamfuse.record.reader import RecordingError, file_time_range, topic_spans


@dataclass
class Recording:
    name: str
    size_bytes: int
    modified_ns: int
    start_ns: int | None = None
    duration_s: float | None = None
    streams: list[str] = field(default_factory=list)
    complete: bool = True
    error: str = ""


def _describe(p: Path, size: int, mtime_ns: int) -> Recording:
    rec = Recording(p.name, size, mtime_ns)
    try:
        span = file_time_range(p)
        spans = topic_spans(p)
    except (RecordingError, OSError, ValueError) as e:
        rec.error = str(e)[:200]
        return rec
    if span is not None:
        rec.start_ns, rec.duration_s = span[0], round((span[1] - span[0]) / NS, 3)
    rec.streams = sorted(spans)
    rec.complete = bool(spans) or span is None
    return rec


class Recordings:
    """Lists ``directory`` and resolves a download name to a file inside it."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._cache: dict[str, tuple[tuple[int, int], Recording]] = {}

    def list(self) -> list[dict[str, Any]]:
        out = []
        kept: dict[str, tuple[tuple[int, int], Recording]] = {}
        try:
            files = sorted(self.directory.glob("*.mcap"))
        except OSError:
            files = []
        for p in files:
            try:
                st = p.stat()
            except OSError:
                continue  # removed meanwhile
            key = (st.st_size, st.st_mtime_ns)
            cached = self._cache.get(p.name)
            if cached is None or cached[0] != key:
                cached = (key, _describe(p, st.st_size, st.st_mtime_ns))
                self._cache[p.name] = cached
            kept[p.name] = cached
            out.append(asdict(cached[1]))
        # only files still there: a daemon that rotates (and removes old files) for months
        # would otherwise keep every name it ever listed
        self._cache = kept
        return out

    def path(self, name: str) -> Path | None:
        """The file ``name`` directly in the directory; None for anything else."""
        if "/" in name or "\\" in name or name.startswith(".") or not name.endswith(".mcap"):
            return None
        p = self.directory / name
        return p if p.is_file() else None

"""A ring of frame slots in one shared-memory file (docs/architecture.md, "Frame plane").

Layout (little-endian): a 64-byte segment header ``MAGIC, version u32, slots u32,
slot_bytes u64`` and then ``slots`` slots of ``SLOT_HEADER`` bytes (``begin u64,
end u64, nbytes u64``) followed by ``slot_bytes`` of data (strides rounded to 64).

The writer owns the file: it creates it, fills slot ``(g - 1) % slots`` with frame
``g`` (``g`` = 1, 2, ...) and unlinks it when it stops. Writing frame ``g`` stores
``begin = g``, then the pixels, then ``end = g``. A reader of frame ``g`` checks
``end == g`` before it looks (the write finished) and ``begin == g`` after (no later
write has started): a seqlock. Anything the reader made from the slot in between is
discarded when the second check fails. x86 keeps stores and loads in program order,
which is all the protocol needs; on weakly ordered CPUs the checks would need fences.

A segment's name is ``streamfuse-<bus tag>-<owner>-<pid>``: the supervisor removes a
dead child's segments by its pid, and a daemon starting up removes those of dead pids
(:func:`reclaim`).
"""

from __future__ import annotations

import hashlib
import mmap
import os
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from streamfuse.wire.schema import FrameRef

PLANE_DIR = Path("/dev/shm")
MAGIC = b"SFPLANE1"
VERSION = 1
HEADER_BYTES = 64
SLOT_HEADER = 64
_HEAD = struct.Struct("<8sIIQ")
NAME_RE = re.compile(r"^streamfuse-[0-9a-f]{10}-[a-z0-9_-]+-[0-9]+$")
MAX_SEGMENT_BYTES = 1 << 34  # what a reader agrees to map
T = TypeVar("T")


class PlaneError(OSError):
    """The frame plane cannot be used here (no shared memory, a bad segment)."""


def bus_tag(bus_input: str) -> str:
    """Segments of one daemon, told apart from another's on the same host by its bus."""
    return hashlib.sha1(bus_input.encode()).hexdigest()[:10]


def segment_name(tag: str, owner: str, pid: int) -> str:
    return f"streamfuse-{tag}-{owner}-{pid}"


def _stride(slot_bytes: int) -> int:
    return SLOT_HEADER + (slot_bytes + 63) // 64 * 64


class RingWriter:
    """Writes frames into ``slots`` slots of ``slot_bytes`` each (one writer per segment)."""

    def __init__(self, name: str, slots: int, slot_bytes: int, *,
                 directory: Path = PLANE_DIR) -> None:
        if slots < 1 or slot_bytes < 1:
            raise ValueError(f"a ring needs slots and bytes, got {slots} x {slot_bytes}")
        self.name = name
        self.path = directory / name
        self.slots = slots
        self.slot_bytes = slot_bytes
        self.stride = _stride(slot_bytes)
        size = HEADER_BYTES + slots * self.stride
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as e:
            raise PlaneError(e.errno, f"cannot create {self.path}: {e.strerror}") from None
        try:
            os.ftruncate(fd, size)
            self._mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as e:
            self.path.unlink(missing_ok=True)
            raise PlaneError(e.errno, f"cannot size {self.path} to {size} bytes: "
                                      f"{e.strerror}") from None
        finally:
            os.close(fd)
        head = _HEAD.pack(MAGIC, VERSION, slots, slot_bytes)
        self._mm[:HEADER_BYTES] = head.ljust(HEADER_BYTES, b"\0")
        self._buf = np.frombuffer(self._mm, dtype=np.uint8)
        self.generation = 0

    def _slot(self, generation: int) -> tuple[int, np.ndarray, np.ndarray]:
        slot = (generation - 1) % self.slots
        off = HEADER_BYTES + slot * self.stride
        head = self._buf[off:off + 24].view(np.uint64)
        return slot, head, self._buf[off + SLOT_HEADER:off + SLOT_HEADER + self.slot_bytes]

    def write(self, data: np.ndarray | bytes | memoryview, encoding: str) -> FrameRef | None:
        """Copy one frame into the next slot; None when it does not fit in a slot."""
        src = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) \
            else np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        n = src.size
        if n > self.slot_bytes:
            return None
        self.generation += 1
        g = self.generation
        slot, head, dst = self._slot(g)
        head[0] = g  # readers of the old frame now fail their second check
        dst[:n] = src
        head[2] = n
        head[1] = g
        return FrameRef(self.name, slot, g, n, encoding)

    def close(self, *, unlink: bool = True) -> None:
        """Unmap and (by default) remove the segment; mappings readers hold stay valid."""
        if unlink:
            self.path.unlink(missing_ok=True)
        self._buf = np.empty(0, dtype=np.uint8)
        self._mm.close()


class _Mapped:
    """One segment as a reader sees it (read-only)."""

    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            if size < HEADER_BYTES or size > MAX_SEGMENT_BYTES:
                raise PlaneError(0, f"{path.name}: {size} bytes is no frame ring")
            self.mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(fd)
        magic, version, slots, slot_bytes = _HEAD.unpack_from(self.mm, 0)
        stride = _stride(slot_bytes)
        if magic != MAGIC or version != VERSION or HEADER_BYTES + slots * stride > size:
            self.mm.close()
            raise PlaneError(0, f"{path.name}: not a version {VERSION} frame ring")
        self.slots, self.slot_bytes, self.stride = slots, slot_bytes, stride
        self.buf = np.frombuffer(self.mm, dtype=np.uint8)


class RingReader:
    """Maps segments by name on first use and reads slots under the seqlock.

    Keeps one mapping per (bus tag, owner): a segment of a newer pid for the same
    owner (a restarted capture) replaces the older one, so a reader never holds a
    dead capture's memory for longer than its next frame. Counts what it could not
    read: ``overwritten`` (a newer frame took the slot) and ``missing`` (no such
    segment, or not a ring).
    """

    def __init__(self, directory: Path = PLANE_DIR) -> None:
        self.directory = directory
        self._maps: dict[str, tuple[str, _Mapped]] = {}  # owner key -> (name, mapping)
        self.overwritten = 0
        self.missing = 0

    def _mapping(self, name: str) -> _Mapped | None:
        key = name.rsplit("-", 1)[0]
        have = self._maps.get(key)
        if have is not None and have[0] == name:
            return have[1]
        if not NAME_RE.match(name):
            return None
        try:
            m = _Mapped(self.directory / name)
        except (OSError, ValueError):
            return None
        if have is not None:
            self._drop(key)
        self._maps[key] = (name, m)
        return m

    def _drop(self, key: str) -> None:
        _name, m = self._maps.pop(key)
        m.buf = np.empty(0, dtype=np.uint8)
        try:
            m.mm.close()
        except BufferError:
            pass  # a view made from it is still alive; the mapping goes with it

    def read(self, ref: FrameRef, fn: Callable[[np.ndarray], T]) -> T | None:
        """``fn(view)`` on the frame's bytes (a read-only uint8 view into the slot),
        or None when the slot no longer holds generation ``ref.generation``. The
        result must not keep ``view``: it is discarded if the slot changed meanwhile."""
        m = self._mapping(ref.segment)
        if m is None or not 0 <= ref.slot < m.slots or not 0 <= ref.nbytes <= m.slot_bytes:
            self.missing += 1
            return None
        off = HEADER_BYTES + ref.slot * m.stride
        head = m.buf[off:off + 24].view(np.uint64)
        g = ref.generation
        if int(head[1]) != g:
            self.overwritten += 1
            return None
        out = fn(m.buf[off + SLOT_HEADER:off + SLOT_HEADER + ref.nbytes])
        if int(head[0]) != g:
            self.overwritten += 1
            return None
        return out

    def copy(self, ref: FrameRef) -> bytes | None:
        """The frame's bytes, copied out of the slot (None when overwritten)."""
        return self.read(ref, lambda v: v.tobytes())

    def close(self) -> None:
        for key in list(self._maps):
            self._drop(key)


# ----------------------------------------------------------------------------- housekeeping


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def segments(tag: str, *, directory: Path = PLANE_DIR) -> list[Path]:
    """This daemon's segments (bus tag ``tag``)."""
    try:
        return sorted(p for p in directory.glob(f"streamfuse-{tag}-*") if NAME_RE.match(p.name))
    except OSError:
        return []


def remove_pid(tag: str, pid: int, *, directory: Path = PLANE_DIR) -> list[str]:
    """Remove the segments a (dead) process ``pid`` left behind; their names."""
    gone = []
    for p in segments(tag, directory=directory):
        if p.name.rsplit("-", 1)[1] == str(pid):
            p.unlink(missing_ok=True)
            gone.append(p.name)
    return gone


def reclaim(tag: str, *, directory: Path = PLANE_DIR) -> list[str]:
    """Remove segments whose writer is no longer alive (a daemon starting up)."""
    gone = []
    for p in segments(tag, directory=directory):
        if not _pid_alive(int(p.name.rsplit("-", 1)[1])):
            p.unlink(missing_ok=True)
            gone.append(p.name)
    return gone


def available(directory: Path = PLANE_DIR) -> str | None:
    """Why shared memory cannot be used here, or None when it can."""
    if not directory.is_dir():
        return f"{directory} does not exist"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"{directory} is not writable"
    return None

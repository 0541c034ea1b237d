"""``streamfuse keys generate DIR``: a CurveZMQ key pair for the bus.

Writes ``DIR/NAME.key`` (public, safe to copy) and ``DIR/NAME.key_secret``
(secret, mode 0600) with ``zmq.auth.create_certificates``. Make one pair for the
broker (``bus.curve.server_secret`` = its ``.key_secret``; clients set
``bus.curve.server_public`` = its ``.key``) and one per remote client (the
client sets ``client_secret``; the broker's ``bus.curve.authorized`` directory
holds a copy of every allowed client's ``.key``).
"""

from __future__ import annotations

import os
from pathlib import Path

import zmq.auth

from streamfuse.usage import UsageError


def generate(directory: Path, name: str) -> tuple[Path, Path]:
    """Create ``directory/name.key`` and ``directory/name.key_secret``; refuse to overwrite."""
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    for p in (public, secret):
        if p.exists():
            raise UsageError(
                f"{p} already exists; not overwriting a key (remove it or pick --name)")
    old = os.umask(0o077)  # the secret must never be readable by others, not even briefly
    try:
        pub, sec = zmq.auth.create_certificates(str(directory), name)
    finally:
        os.umask(old)
    os.chmod(sec, 0o600)
    os.chmod(pub, 0o644)
    return Path(pub), Path(sec)

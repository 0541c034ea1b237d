"""``streamfuse shadow``, ``streamfuse promote`` and ``streamfuse rollback``: which model
artifact is live or shadow (:mod:`streamfuse.fusion.store`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from streamfuse.config import Config, ConfigError
from streamfuse.fusion.store import (
    StoreError,
    previous_dir,
    promote,
    rollback,
    set_shadow,
    signal_daemon,
)


def _tell(cfg: Config, what: str) -> None:
    pid = signal_daemon(cfg)
    where = (
        f"told the daemon (pid {pid}) with SIGHUP"
        if pid
        else "no running daemon holds the run directory; it takes effect when one starts"
    )
    print(f"streamfuse: {what}; {where}")


def shadow(args: argparse.Namespace, cfg: Config) -> int:
    """``streamfuse shadow DIR`` / ``streamfuse shadow --off``."""
    if (args.dir is None) == (not args.off):
        raise ConfigError("give DIR (an artifact to run as the shadow) or --off")
    try:
        set_shadow(cfg, None if args.off else Path(args.dir))
    except StoreError as e:
        raise ConfigError(str(e)) from None
    _tell(cfg, "no shadow model" if args.off else f"shadow model {Path(args.dir).resolve()}")
    return 0


def promote_shadow(args: argparse.Namespace, cfg: Config) -> int:
    """``streamfuse promote``: the shadow becomes the live model."""
    return _swap(cfg, promote, "is live")


def roll_back(args: argparse.Namespace, cfg: Config) -> int:
    """``streamfuse rollback``: the previous live model is live again."""
    return _swap(cfg, rollback, "is live again")


def _swap(cfg: Config, swap: Callable[[Config], tuple[str | None, str]], state: str) -> int:
    """Run ``swap`` (promote or rollback: the model ids that was and is live), then say what
    is live and where the other one is kept, and tell a running daemon."""
    try:
        was, now = swap(cfg)
    except StoreError as e:
        raise ConfigError(str(e)) from None
    _tell(cfg, f"model {now} {state}, {was or 'nothing'} kept in {previous_dir(cfg)}")
    return 0

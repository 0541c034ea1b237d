"""``streamfuse shadow``, ``streamfuse promote`` and ``streamfuse rollback``: which model
artifact is live or shadow (:mod:`streamfuse.fusion.store`)."""

from __future__ import annotations

import argparse
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
    try:
        old, new = promote(cfg)
    except StoreError as e:
        raise ConfigError(str(e)) from None
    _tell(cfg, f"model {new} is live, {old or 'nothing'} kept in {previous_dir(cfg)}")
    return 0


def roll_back(args: argparse.Namespace, cfg: Config) -> int:
    """``streamfuse rollback``: the previous live model is live again."""
    try:
        was, now = rollback(cfg)
    except StoreError as e:
        raise ConfigError(str(e)) from None
    _tell(cfg, f"model {now} is live again, {was or 'nothing'} kept in {previous_dir(cfg)}")
    return 0

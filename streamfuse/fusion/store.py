"""Where the live, previous and shadow artifacts are, and how promote/rollback swap them.

Layout (README.md, "Teach it"), for ``fusion.model = /var/lib/streamfuse/model``:

- ``/var/lib/streamfuse/model``: the live artifact, what every worker serves;
- ``/var/lib/streamfuse/model.previous``: the artifact promote replaced (rollback's target);
- the shadow: the directory named in ``<run dir>/shadow`` (written by ``streamfuse shadow
  DIR``, removed by ``--off`` and by a promotion), else ``fusion.shadow``, else none.

**promote** copies the shadow into ``model.incoming``, exchanges it with ``model`` in one
``renameat2(RENAME_EXCHANGE)`` (a reader sees the old or the new directory, never a mix
or nothing), keeps the old one as ``model.previous`` and removes the run-dir shadow
choice. **rollback** exchanges ``model`` and ``model.previous`` (a second rollback
undoes the first). Then the daemon is told with SIGHUP (the pid in ``<run dir>/
streamfuse.lock``): its workers load the new live artifact between two batches, the hot
reload path, so no window goes unanswered or is answered twice. A worker also notices
the change on disk within ``fusion.reload_poll_s`` without a signal.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import os
import shutil
import signal
from pathlib import Path

from streamfuse.config import Config, ConfigError, runtime_dir
from streamfuse.fusion.artifact import ArtifactError, load_artifact, read_manifest

SHADOW_CHOICE = "shadow"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


class StoreError(ValueError):
    """A promote, rollback or shadow that cannot be done; nothing was changed."""


def live_dir(cfg: Config) -> Path:
    return Path(cfg.fusion.model)


def previous_dir(cfg: Config) -> Path:
    live = live_dir(cfg)
    return live.with_name(live.name + ".previous")


def _incoming_dir(cfg: Config) -> Path:
    live = live_dir(cfg)
    return live.with_name(live.name + ".incoming")


def shadow_dir(cfg: Config, run_dir: Path | None = None) -> Path | None:
    """The shadow artifact in effect (see the module docstring), or None."""
    choice = (run_dir or runtime_dir(cfg)) / SHADOW_CHOICE
    try:
        text = choice.read_text("utf-8").strip()
    except FileNotFoundError:
        text = cfg.fusion.shadow
    return Path(text) if text else None


def captured_modalities(cfg: Config) -> set[str] | None:
    """The modalities the configured sources capture; None when no source is configured
    (everything then comes from the bus, and any modality may)."""
    if not cfg.sources:
        return None
    return {m for s in cfg.sources for m in ("video", "audio", "text") if getattr(s, m) is not None}


def check_candidate(directory: Path, cfg: Config) -> dict:
    """The manifest of an artifact that can run beside the live model under ``cfg``, or
    :class:`StoreError`: its aligner parameters must match ``[align]`` and every modality
    it uses must come from a configured source (when sources are configured)."""
    try:
        manifest = load_artifact(directory, align=cfg.align).manifest  # the worker's checks
    except ArtifactError as e:
        raise StoreError(str(e)) from None
    given = captured_modalities(cfg)
    if given is not None:
        missing = sorted(set(manifest["modalities"]) - given)
        if missing:
            raise StoreError(
                f"{directory}: the model uses {', '.join(missing)}, which no configured "
                f"source captures ([[sources]] give {', '.join(sorted(given)) or 'nothing'})"
            )
    return manifest


def set_shadow(cfg: Config, directory: Path | None, run_dir: Path | None = None) -> None:
    """Make ``directory`` the shadow (checked first), or none with None."""
    choice = (run_dir or runtime_dir(cfg)) / SHADOW_CHOICE
    if directory is None:
        _write(choice, "")
        return
    check_candidate(directory, cfg)
    _write(choice, str(directory.resolve()))


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text + "\n", "utf-8")
    os.replace(tmp, path)


def exchange(a: Path, b: Path) -> None:
    """Swap two directories atomically (Linux ``renameat2``); two renames where the
    filesystem cannot (a reader may then briefly find ``b`` missing, and retries)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is not None:
        if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(err, os.strerror(err), str(a))
    tmp = b.with_name(b.name + ".swap")
    os.rename(b, tmp)
    os.rename(a, b)
    os.rename(tmp, a)


def promote(cfg: Config, run_dir: Path | None = None) -> tuple[str | None, str]:
    """Make the shadow live; returns (previous live id or None, new live id)."""
    run_dir = run_dir or runtime_dir(cfg)
    shadow = shadow_dir(cfg, run_dir)
    if shadow is None:
        raise StoreError(
            "no shadow model to promote: set fusion.shadow or run `streamfuse shadow DIR`"
        )
    new_id = check_candidate(shadow, cfg)["model_id"]
    live, incoming, previous = live_dir(cfg), _incoming_dir(cfg), previous_dir(cfg)
    old_id = _model_id(live)
    if old_id == new_id:
        raise StoreError(f"the shadow {shadow} is already the live model ({new_id})")
    shutil.rmtree(incoming, ignore_errors=True)
    shutil.copytree(shadow, incoming)
    if live.exists():
        exchange(incoming, live)  # incoming now holds the old live artifact
        shutil.rmtree(previous, ignore_errors=True)
        os.rename(incoming, previous)
    else:
        os.rename(incoming, live)
    (run_dir / SHADOW_CHOICE).unlink(missing_ok=True)
    return old_id, new_id


def rollback(cfg: Config) -> tuple[str | None, str]:
    """Swap the live and previous artifacts; returns (id now previous, id now live)."""
    live, previous = live_dir(cfg), previous_dir(cfg)
    back = _model_id(previous)
    if back is None:
        raise StoreError(
            f"nothing to roll back to: {previous} holds no artifact (promote keeps it)"
        )
    exchange(previous, live)
    return _model_id(previous), back


def _model_id(directory: Path) -> str | None:
    try:
        return str(read_manifest(directory)["model_id"])
    except ArtifactError:
        return None


def signal_daemon(cfg: Config, run_dir: Path | None = None) -> int | None:
    """SIGHUP the ``streamfuse run`` holding ``<run dir>/streamfuse.lock``; its pid, or None
    when no daemon holds the lock."""
    lock = (run_dir or runtime_dir(cfg)) / "streamfuse.lock"
    try:
        f = open(lock)  # noqa: SIM115 - closed below; the lock test needs the open file
    except FileNotFoundError:
        return None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = int(f.read().strip() or 0)
            if pid > 0:
                os.kill(pid, signal.SIGHUP)
                return pid
        return None


# ----------------------------------------------------------------------------- commands


def _tell(cfg: Config, what: str) -> None:
    pid = signal_daemon(cfg)
    where = (
        f"told the daemon (pid {pid}) with SIGHUP"
        if pid
        else "no running daemon holds the run directory; it takes effect when one starts"
    )
    print(f"streamfuse: {what}; {where}")


def shadow_cli(args: argparse.Namespace, cfg: Config) -> int:
    """``streamfuse shadow DIR`` / ``streamfuse shadow --off``."""
    if (args.dir is None) == (not args.off):
        raise ConfigError("give DIR (an artifact to run as the shadow) or --off")
    try:
        set_shadow(cfg, None if args.off else Path(args.dir))
    except StoreError as e:
        raise ConfigError(str(e)) from None
    _tell(cfg, "no shadow model" if args.off else f"shadow model {Path(args.dir).resolve()}")
    return 0


def promote_cli(args: argparse.Namespace, cfg: Config) -> int:
    """``streamfuse promote``: the shadow becomes the live model."""
    try:
        old, new = promote(cfg)
    except StoreError as e:
        raise ConfigError(str(e)) from None
    _tell(cfg, f"model {new} is live, {old or 'nothing'} kept in {previous_dir(cfg)}")
    return 0


def rollback_cli(args: argparse.Namespace, cfg: Config) -> int:
    """``streamfuse rollback``: the previous live model is live again."""
    try:
        was, now = rollback(cfg)
    except StoreError as e:
        raise ConfigError(str(e)) from None
    _tell(cfg, f"model {now} is live again, {was or 'nothing'} kept in {previous_dir(cfg)}")
    return 0

"""``streamfuse crossval``: leave-one-group-out cross-validation of the training recipe.

Every split of the data set given is pooled (a data set root's ``train``, ``val`` and
``test``); the groups are a column of the ``segments.csv`` beside each ``labels.csv``
(``--by speaker``), see :mod:`streamfuse.train.crossval`. On avdigits the audio is also
scored alone over the windows with at least 150 ms of the spoken digit
(:func:`streamfuse.datasets.avdigits.speech_windows`).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from streamfuse.clock import NS_PER_MS
from streamfuse.config import Config
from streamfuse.datasets import avdigits
from streamfuse.train import crossval
from streamfuse.train.dataset import DataError
from streamfuse.train.labels import LabelError
from streamfuse.usage import UsageError, check_output_dir

# Augmentation flags: (TrainOptions field, how many numbers, lowest allowed value).
AUGMENT_FLAGS = {"speed": ("speed", 1, 0.0), "vtlp": ("vtlp", 1, 0.0),
                 "pitch": ("pitch", 1, 0.0), "mix": ("mix", 1, 0.0),
                 "mix_snr": ("mix_snr", 2, -30.0), "masks": ("masks", 1, 0.0)}


# What the audio alone is scored on (avdigits.speech_windows).
SPEECH = "audio alone, >= 150 ms of the word"
WHOLE_WORD = "audio alone, all of the word"


def split_dirs(recordings: list[str]) -> list[str]:
    """A data set root's ``train``, ``val``, ``test`` (those present); other paths as given."""
    out: list[str] = []
    for p in recordings:
        root = Path(p)
        subs = [root / s for s in avdigits.SPLITS if (root / s).is_dir()]
        out += [str(s) for s in subs] if subs else [p]
    return out


def options(args: argparse.Namespace) -> Any:
    """The :class:`TrainOptions` the flags ask for (exit 2 for a bad value)."""
    from streamfuse.fusion.features import MODALITIES
    from streamfuse.train.loop import TrainOptions

    if args.epochs < 1 or args.batch_size < 1:
        raise UsageError("--epochs and --batch-size must be >= 1")
    extra: dict[str, Any] = {}
    for flag, (field, n, low) in AUGMENT_FLAGS.items():
        v = getattr(args, flag, None)
        if v is None:
            continue
        vals = v if isinstance(v, list) else [v]
        if len(vals) != n or not all(math.isfinite(x) and x >= low for x in vals):
            raise UsageError(f"--{flag.replace('_', '-')}: expected {n} number(s) >= {low}, "
                             f"got {' '.join(map(str, vals))}")
        extra[field] = tuple(float(x) for x in vals) if n > 1 else (
            int(vals[0]) if field == "masks" else float(vals[0]))
    modalities = tuple(m for m in MODALITIES if m in (args.modalities or MODALITIES))
    opts = TrainOptions(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                        modalities=modalities, audio_norm=args.audio_norm, **extra)
    return with_settings(opts, getattr(args, "set", None) or [])


def with_settings(opts: Any, settings: list[str]) -> Any:
    """``opts`` with ``FIELD=VALUE`` settings (``--set``) applied: any :class:`TrainOptions`
    field, a tuple field as comma-separated values (exit 2 for an unknown field or a value
    of the wrong type)."""
    import dataclasses

    defaults = {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)}
    changes: dict[str, Any] = {}
    for item in settings:
        name, sep, text = item.partition("=")
        if not sep or name not in defaults:
            raise UsageError(f"--set {item}: expected FIELD=VALUE with a training option "
                             f"({', '.join(sorted(defaults))})")
        old = defaults[name]
        try:
            if isinstance(old, tuple):
                kind = type(old[0]) if old else str
                changes[name] = tuple(kind(v) for v in text.split(",") if v)
            elif isinstance(old, bool):
                changes[name] = {"true": True, "false": False}[text.lower()]
            else:
                changes[name] = type(old)(text)
        except (KeyError, ValueError):
            raise UsageError(f"--set {item}: not a {type(old).__name__}") from None
    try:
        return dataclasses.replace(opts, **changes)
    except (TypeError, ValueError) as e:
        raise UsageError(f"--set: {e}") from None


def run(args: argparse.Namespace, cfg: Config) -> int:
    """Exit 2 for bad flags, labels or data; 0 with the report's table on stdout."""
    import torch

    from streamfuse.train.dataset import load_windows
    from streamfuse.train.loop import _pick_device

    check_output_dir(args.out, "--out")
    opts = options(args)
    device = _pick_device(args.device)
    if device.type != "cpu":
        raise UsageError("--device: cross-validation runs on the CPU only for now")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    dirs = split_dirs(list(args.recordings))
    files = avdigits.find_segment_files(dirs)
    if len(files) != len(dirs):
        raise UsageError(f"--by {args.by}: every recordings directory needs a "
                         f"{avdigits.SEGMENTS_FILE} (found {len(files)} for {len(dirs)})")
    window_ns = cfg.align.window_ms * NS_PER_MS
    try:
        table = crossval.read_segment_table(files)
        ws = load_windows(dirs, cfg.align, opts.preprocessing(cfg.align), progress=not args.quiet)
        groups = crossval.single_group(crossval.window_values(table, ws.keys, window_ns, args.by))
        disjoint = None
        if args.disjoint:
            per_col = [crossval.window_values(table, ws.keys, window_ns, c)
                       for c in args.disjoint]
            disjoint = [frozenset(f"{c}={v}" for c, vals in zip(args.disjoint, row, strict=True)
                                  for v in vals) for row in zip(*per_col, strict=True)]
        prefixes = getattr(args, "train_only", None) or []
        train_only = sorted({g for g in groups if g is not None
                             and any(g.startswith(pre) for pre in prefixes)})
        folds = crossval.leave_one_group_out(groups, disjoint, train_only)
        segs = avdigits.read_segments(files)
    except (DataError, LabelError, avdigits.SegmentsError) as e:
        raise UsageError(str(e)) from None
    labels = [ws.classes[i] for i in ws.y]
    focus = {SPEECH: ("audio", avdigits.speech_windows(segs, ws.keys, labels, window_ns)),
             WHOLE_WORD: ("audio", avdigits.speech_windows(segs, ws.keys, labels, window_ns,
                                                            whole=True))}
    report = crossval.crossvalidate(ws, folds, opts.preprocessing(cfg.align), opts, focus=focus,
                                    quiet=args.quiet)
    if prefixes:
        report.update(train_only_prefixes=list(prefixes), train_only=train_only)
    report.update(column=args.by, disjoint=list(args.disjoint or []),
                  recordings=dirs, windows=len(ws),
                  windows_in_no_fold=sum(g is None for g in groups))
    for p in crossval.write_report(args.out, report):
        print(p, file=sys.stderr)
    print(crossval.markdown(report))
    return 0

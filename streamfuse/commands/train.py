"""``streamfuse train``: recordings + labels -> a model artifact (:mod:`streamfuse.train.loop`);
exit 2 on bad options, labels or data, 1 on other failures."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any

import torch

from streamfuse.config import Config
from streamfuse.fusion.features import MODALITIES
from streamfuse.train.dataset import DataError
from streamfuse.train.labels import LabelError
from streamfuse.train.loop import TrainData, TrainOptions, train_artifact
from streamfuse.usage import UsageError, check_output_dir


def run(args: argparse.Namespace, cfg: Config) -> int:
    opts = options(args)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 writes the artifact
        check_output_dir(args.out, "--out")
    torch.use_deterministic_algorithms(True, warn_only=True)
    # Deterministic mode also fills every new tensor with NaN (to expose reads of uninitialised
    # memory); it cost ~12 % of a training step here (tens of thousands of fills per epoch)
    # and changes no result: the kernels overwrite what they allocate.
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    try:
        train_artifact(cfg.align, opts, data(args), args.out, device=args.device,
                       quiet=args.quiet)
    except (DataError, LabelError) as e:
        raise UsageError(str(e)) from None
    return 0


def options(args: argparse.Namespace) -> TrainOptions:
    """The hyper-parameters the flags set (:class:`UsageError` naming a bad one); the rest
    keep :class:`TrainOptions`' defaults."""
    if args.epochs < 1 or args.batch_size < 1 or not args.lr > 0:
        raise UsageError("--epochs and --batch-size must be >= 1 and --lr > 0")
    extra: dict[str, Any] = {}
    if args.aux_weight is not None:
        if not (math.isfinite(args.aux_weight) and args.aux_weight >= 0):
            raise UsageError(f"--aux-weight: expected a number >= 0, got {args.aux_weight}")
        extra["aux_weight"] = float(args.aux_weight)
    if args.drop_weights is not None:
        if not all(math.isfinite(w) and w > 0 for w in args.drop_weights):
            raise UsageError("--drop-weights: expected three numbers > 0, "
                             f"got {' '.join(map(str, args.drop_weights))}")
        extra["drop_weights"] = tuple(float(w) for w in args.drop_weights)
    if args.occlude is not None:
        if not (math.isfinite(args.occlude) and 0 <= args.occlude <= 1):
            raise UsageError(f"--occlude: expected a share between 0 and 1, got {args.occlude}")
        extra["occlude"] = float(args.occlude)
    modalities = tuple(m for m in MODALITIES if m in (args.modalities or MODALITIES))
    return TrainOptions(fusion=args.fusion, modalities=modalities, epochs=args.epochs,
                        batch_size=args.batch_size, lr=args.lr, seed=args.seed, **extra)


def data(args: argparse.Namespace) -> TrainData:
    """``--recordings`` and the rest; a data set root given as ``--recordings`` (one with
    ``DIR/train``) trains on ``DIR/train`` and, without ``--val-recordings``, validates on
    ``DIR/val``."""
    train_paths: list[str] = []
    val_paths: list[str] = list(args.val_recordings or [])
    for p in args.recordings:
        root = Path(p)
        if root.is_dir() and (root / "train").is_dir():
            train_paths.append(str(root / "train"))
            if not args.val_recordings and (root / "val").is_dir():
                val_paths.append(str(root / "val"))
        else:
            train_paths.append(p)
    return TrainData(train_paths, args.labels, val_paths or None, args.val_labels)

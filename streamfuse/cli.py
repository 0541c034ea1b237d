"""The ``streamfuse`` command line (README.md shows them in use).

Each subcommand is declared here with its arguments and names the function
that runs it (``module:function``, imported lazily so ``streamfuse capture`` on
an edge host never imports torch). That function takes
``(args: argparse.Namespace, cfg: Config) -> int``.

Exit codes: 0 success, 2 bad usage or bad config (one line, no traceback),
1 runtime failure.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from streamfuse import __version__, logs
from streamfuse.config import Config, ConfigError, load

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad usage found after parsing (exit 2, one line)."""


def check_output_dir(path: str | Path, flag: str) -> None:
    """Raise :class:`UsageError` naming ``flag`` unless ``path`` is, or can be made, a directory
    this process can write in; checked before a long job rather than at its end. Leaves
    nothing behind: directories it creates to try are removed again."""
    p = Path(path)
    missing: list[Path] = []
    q = p
    while not q.exists() and q != q.parent:
        missing.append(q)
        q = q.parent
    created: list[Path] = []
    try:
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                continue  # made meanwhile by someone else: theirs to keep
            created.append(d)
        with tempfile.TemporaryFile(dir=p):
            pass
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot write there: {e.strerror or e}") from None
    finally:
        for d in reversed(created):
            try:
                d.rmdir()
            except OSError:
                pass  # someone else has started to use it


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="F", help="TOML config (default: $STREAMFUSE_CONFIG, "
                   "/etc/streamfuse/streamfuse.toml if present, else built-in defaults)")


Adder = Callable[[argparse.ArgumentParser], None]

# name -> (help, "module:function", argument adder)
COMMANDS: dict[str, tuple[str, str, Adder]] = {}


def command(name: str, help: str, target: str) -> Callable[[Adder], Adder]:
    def deco(fn: Adder) -> Adder:
        COMMANDS[name] = (help, target, fn)
        return fn

    return deco


@command("run", "the daemon: broker, captures, aligner, workers, optional recorder",
         "streamfuse.service.supervisor:cli")
def _run(p: argparse.ArgumentParser) -> None:
    _config_arg(p)


@command("broker", "the bus alone (XSUB input, XPUB output)", "streamfuse.service.broker_cli:cli")
def _broker(p: argparse.ArgumentParser) -> None:
    _config_arg(p)


@command("capture", "one capture process (edge hosts run just this)", "streamfuse.capture:cli")
def _capture(p: argparse.ArgumentParser) -> None:
    p.add_argument("stream", choices=["video", "audio", "text"])
    p.add_argument("--source", required=True, help="source name from the config ([[sources]] name)")
    _config_arg(p)


@command("align", "one aligner, standalone", "streamfuse.align.node:cli")
def _align(p: argparse.ArgumentParser) -> None:
    _config_arg(p)


@command("fuse", "one fusion worker, standalone", "streamfuse.fusion.node:cli")
def _fuse(p: argparse.ArgumentParser) -> None:
    _config_arg(p)


@command("record", "record the bus to MCAP", "streamfuse.record.writer:cli")
def _record(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="PATH", help="output .mcap file or directory")
    p.add_argument("--topics", nargs="+", metavar="PREFIX", default=None, help="topic prefixes (default: all)")
    p.add_argument("--duration", type=float, metavar="S", default=None, help="stop after S seconds")
    _config_arg(p)


@command("replay", "publish recordings onto the bus", "streamfuse.record.replay:cli")
def _replay(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--rate", type=float, default=1.0, metavar="R", help="1.0 = real time")
    g.add_argument("--max", action="store_true", help="as fast as the consumers take it")
    p.add_argument("--loop", action="store_true")
    p.add_argument("--start", type=float, default=None, metavar="S", help="start offset in seconds")
    p.add_argument("--end", type=float, default=None, metavar="S", help="end offset in seconds")
    p.add_argument("--topics", nargs="+", metavar="PREFIX", default=None)
    p.add_argument("--restamp", action="store_true", help="shift all times so the replay starts now")
    _config_arg(p)


@command("convert", "rewrite old recordings in the current (Foxglove) layout",
         "streamfuse.record.convert:cli")
def _convert(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--out", metavar="PATH", default=None,
                   help="output file (one input only; default: FILE-converted.mcap beside it)")


@command("foxglove", "serve the bus to Foxglove over WebSocket ([foxglove] listen)",
         "streamfuse.bridge.foxglove:cli")
def _foxglove(p: argparse.ArgumentParser) -> None:
    _config_arg(p)


@command("inspect", "summarise recordings: topics, counts, rates, gaps, size", "streamfuse.record.reader:cli")
def _inspect(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--json", action="store_true", help="machine-readable output")


@command("train", "train a model artifact from recordings", "streamfuse.train.loop:cli")
def _train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recordings", nargs="+", required=True, metavar="PATH")
    p.add_argument("--labels", metavar="F", default=None)
    p.add_argument("--val-recordings", nargs="+", metavar="PATH", default=None)
    p.add_argument("--val-labels", metavar="F", default=None)
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--fusion", choices=["concat", "mean", "weighted", "attention"], default="attention")
    p.add_argument("--modalities", nargs="+", choices=["video", "audio", "text"], default=None)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--aux-weight", type=float, default=None, metavar="W",
                   help="weight of the per-modality auxiliary losses (0 = off; default 0.5)")
    p.add_argument("--drop-weights", type=float, nargs=3, default=None, metavar=("VIDEO", "AUDIO", "TEXT"),
                   help="odds of each modality being the one modality dropout clears (default 4 1 1)")
    p.add_argument("--occlude", type=float, default=None, metavar="SHARE",
                   help="share of training windows with a bar drawn over part of the view (0 = off; default 0.5)")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _config_arg(p)


@command("eval", "metrics, confusion matrix, per-modality ablation", "streamfuse.train.evaluate:cli")
def _eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="DIR")
    p.add_argument("--recordings", nargs="+", required=True, metavar="PATH")
    p.add_argument("--labels", metavar="F", default=None)
    p.add_argument("--report", metavar="DIR", default=None)
    p.add_argument("--device", default="auto")
    _config_arg(p)


@command("tail", "print stream rates, gaps and latency, or classifications as JSON lines",
         "streamfuse.capture.tools:tail_cli")
def _tail(p: argparse.ArgumentParser) -> None:
    p.add_argument("--topic", metavar="T", default=None,
                   help="topic prefix; under class/ (or with --classes) it prints "
                        "classification JSON lines")
    p.add_argument("--classes", action="store_true", help="print classifications as JSON lines")
    p.add_argument("--endpoint", metavar="E", default=None,
                   help="read this endpoint (default: bus.results, or bus.output for a --topic "
                        "that only it carries)")
    p.add_argument("--count", type=int, default=None, help="exit after N lines")
    p.add_argument("--duration", type=float, default=None, metavar="S", help="exit after S seconds")
    _config_arg(p)


@command("send", "inject one text message", "streamfuse.capture.tools:send_cli")
def _send(p: argparse.ArgumentParser) -> None:
    p.add_argument("text")
    p.add_argument("--source", required=True)
    p.add_argument("--timeout", type=float, default=3.0, metavar="S",
                   help="wait this long for the text capture's answer (default 3)")
    _config_arg(p)


@command("devices", "list cameras and microphones", "streamfuse.capture.tools:devices_cli")
def _devices(p: argparse.ArgumentParser) -> None:
    _config_arg(p)


@command("dataset", "build benchmark recordings and labels", "streamfuse.datasets.avdigits:cli")
def _dataset(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", choices=["avdigits"])
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--images", default="sklearn", metavar="sklearn|PATH", help="sklearn or an MNIST idx file")
    p.add_argument("--speech", default=None, metavar="DIR", help="FSDD-style wavs (default: espeak-ng)")
    p.add_argument("--noise", default=None, metavar="DIR", help="background sounds (default: generated noise)")
    p.add_argument("--segments", type=int, default=2000, metavar="N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", choices=["all", "test"], default="all")
    _config_arg(p)


@command("demo", "build demo data, train or reuse a model, replay it through the daemon",
         "streamfuse.service.demo:cli")
def _demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--small", action="store_true", help="a reduced size for tests")
    p.add_argument("--live", action="store_true", help="use the configured camera and microphone")
    p.add_argument("--cache", metavar="DIR", default=None, help="where data and the model are kept")
    p.add_argument("--data", metavar="DIR", default=None, help="a shared/data-style directory of real media")
    _config_arg(p)


@command("keys", "CurveZMQ keys: `keys generate DIR`", "streamfuse.service.keys:cli")
def _keys(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["generate"])
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--name", default="streamfuse")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamfuse", description="Real-time multimodal sensor fusion daemon.")
    parser.add_argument("--version", action="version", version=f"streamfuse {__version__}")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (default INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_, _target, adder) in COMMANDS.items():
        adder(sub.add_parser(name, help=help_, description=help_))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.setup(level=args.log_level)
    _help, target, _adder = COMMANDS[args.command]
    try:
        cfg = load(getattr(args, "config", None)) if hasattr(args, "config") else Config()
        module_name, func_name = target.split(":")
        func = getattr(importlib.import_module(module_name), func_name)
        return int(func(args, cfg) or 0)
    except (ConfigError, UsageError) as e:
        print(f"streamfuse {args.command}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

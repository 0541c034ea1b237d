"""The ``streamfuse`` command line (README.md shows them in use).

Each subcommand is declared here with its arguments and names the function of the
command layer (:mod:`streamfuse.commands`) that runs it: ``module:function``, imported
only when that command runs, so ``streamfuse capture`` on an edge host never imports
torch. That function takes ``(args: argparse.Namespace, cfg: Config) -> int``; only the
command layer sees ``args``.

Exit codes: 0 success, 2 bad usage or bad config (one line, no traceback),
1 runtime failure, 130 interrupted (Ctrl-C, SIGINT).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from streamfuse import __version__, logs, signals
from streamfuse.config import Config, ConfigError, load
from streamfuse.usage import UsageError, missing_extra

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 128 + 2  # SIGINT, as shells report it
# Commands whose torch trains (see main: OpenMP's wait policy is set before torch loads).
TRAINING_COMMANDS = frozenset({"train", "eval", "crossval", "demo"})


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="F", help="TOML config (default: $STREAMFUSE_CONFIG, "
                   "/etc/streamfuse/streamfuse.toml if present, else built-in defaults)")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default after its help, keeps the example in the epilog as
    written, and leaves out defaults that say nothing (``None`` and a flag's ``False``:
    their help text says in words what happens without them)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


Adder = Callable[[argparse.ArgumentParser], None]


@dataclass(frozen=True)
class Command:
    help: str
    target: str  # "module:function", imported when the command runs
    adder: Adder
    example: str  # one or more command lines, shown at the end of --help


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, target: str, example: str) -> Callable[[Adder], Adder]:
    def deco(fn: Adder) -> Adder:
        COMMANDS[name] = Command(help, target, fn, example)
        return fn

    return deco


@command("run", "the daemon: broker, captures, aligner, workers, optional recorder",
         "streamfuse.commands.run:run",
         "streamfuse run --config /etc/streamfuse/streamfuse.toml")
def _run(p: argparse.ArgumentParser) -> None:
    _config_arg(p)


@command("broker", "the bus alone (XSUB input, XPUB output)", "streamfuse.commands.broker:run",
         "streamfuse broker --config /etc/streamfuse/streamfuse.toml")
def _broker(p: argparse.ArgumentParser) -> None:
    _config_arg(p)


@command("capture", "one capture process (edge hosts run just this)",
         "streamfuse.commands.capture:run",
         "streamfuse capture video --source room1 --config /etc/streamfuse/streamfuse.toml")
def _capture(p: argparse.ArgumentParser) -> None:
    p.add_argument("stream", choices=["video", "audio", "text"], help="which stream of the source")
    p.add_argument("--source", required=True,
                   help="source name from the config ([[sources]] name)")
    _config_arg(p)


@command("align", "one aligner, standalone", "streamfuse.commands.align:run",
         "streamfuse align --config /etc/streamfuse/streamfuse.toml")
def _align(p: argparse.ArgumentParser) -> None:
    _config_arg(p)


@command("fuse", "one fusion worker, standalone", "streamfuse.commands.fuse:run",
         "streamfuse fuse --config /etc/streamfuse/streamfuse.toml")
def _fuse(p: argparse.ArgumentParser) -> None:
    _config_arg(p)


@command("web", "the web console alone (`streamfuse run` starts it as a child)",
         "streamfuse.commands.web:run", "streamfuse web --config /etc/streamfuse/streamfuse.toml")
def _web(p: argparse.ArgumentParser) -> None:
    _config_arg(p)


@command("record", "record the bus to MCAP", "streamfuse.commands.record:run",
         "streamfuse record --out /data/session.mcap --topics room1/ --duration 600")
def _record(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="PATH",
                   help="output .mcap file (numbered -0000, -0001, ...) or directory")
    p.add_argument("--topics", nargs="+", metavar="PREFIX", default=None,
                   help="topic prefixes to record (default: record.topics, else every topic)")
    p.add_argument("--duration", type=float, metavar="S", default=None,
                   help="stop after S seconds (default: until stopped)")
    _config_arg(p)


@command("replay", "publish recordings onto the bus", "streamfuse.commands.replay:run",
         "streamfuse replay /data/recordings --rate 4 --topics room1/video room1/audio")
def _replay(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="recordings, or directories of *.mcap files, merged in time order")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--rate", type=float, default=1.0, metavar="R", help="speed; 1.0 = real time")
    g.add_argument("--max", action="store_true",
                   help="as fast as the consumers take it (default: paced by --rate)")
    p.add_argument("--loop", action="store_true", help="start again at the end (default: once)")
    p.add_argument("--start", type=float, default=None, metavar="S",
                   help="start offset in seconds (default: the first message)")
    p.add_argument("--end", type=float, default=None, metavar="S",
                   help="end offset in seconds (default: the last message)")
    p.add_argument("--topics", nargs="+", metavar="PREFIX", default=None,
                   help="topic prefixes to replay (default: every topic)")
    p.add_argument("--restamp", action="store_true",
                   help="shift all times so the replay starts now (default: recorded times)")
    _config_arg(p)


@command("convert", "rewrite old recordings in the current (Foxglove) layout",
         "streamfuse.commands.convert:run", "streamfuse convert /data/old/session-0000.mcap")
def _convert(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="recordings in the old layout")
    p.add_argument("--out", metavar="PATH", default=None,
                   help="output file (one input only; default: FILE-converted.mcap beside it)")


@command("foxglove", "serve the bus to Foxglove over WebSocket ([foxglove] listen)",
         "streamfuse.commands.foxglove:run",
         "streamfuse foxglove --config /etc/streamfuse/streamfuse.toml")
def _foxglove(p: argparse.ArgumentParser) -> None:
    _config_arg(p)


@command("inspect", "summarise recordings: topics, counts, rates, gaps, size",
         "streamfuse.commands.inspect:run", "streamfuse inspect --json /data/recordings")
def _inspect(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="recordings, or directories of *.mcap files")
    p.add_argument("--json", action="store_true",
                   help="machine-readable output (default: a table per file)")


@command("train", "train a model artifact from recordings", "streamfuse.commands.train:run",
         "streamfuse train --recordings /data/avdigits --out /var/lib/streamfuse/model")
def _train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recordings", nargs="+", required=True, metavar="PATH",
                   help="training recordings (files, or directories of *.mcap)")
    p.add_argument("--labels", metavar="F", default=None,
                   help="labels CSV (default: labels.csv in the recordings' directory, "
                        "else the label messages in the recordings)")
    p.add_argument("--val-recordings", nargs="+", metavar="PATH", default=None,
                   help="validation recordings (default: DIR/val of a data set root given as "
                        "--recordings, else 15 %% of the windows, in 30 s blocks)")
    p.add_argument("--val-labels", metavar="F", default=None,
                   help="labels CSV of the validation recordings (default: as for --labels)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="where the model artifact is written")
    p.add_argument("--fusion", choices=["concat", "mean", "weighted", "attention"],
                   default="attention", help="how the modalities' features are combined")
    p.add_argument("--modalities", nargs="+", choices=["video", "audio", "text"], default=None,
                   help="modalities the model uses (default: every one found in the data)")
    p.add_argument("--epochs", type=int, default=20, help="training epochs")
    p.add_argument("--batch-size", type=int, default=64, help="windows per training step")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (one-cycle)")
    p.add_argument("--seed", type=int, default=0, help="random seed (training is deterministic)")
    p.add_argument("--aux-weight", type=float, default=None, metavar="W",
                   help="weight of the per-modality auxiliary losses (0 = off; default 0.5)")
    p.add_argument("--drop-weights", type=float, nargs=3, default=None,
                   metavar=("VIDEO", "AUDIO", "TEXT"),
                   help="odds of each modality being the one modality dropout clears "
                        "(default 4 1 1)")
    p.add_argument("--occlude", type=float, default=None, metavar="SHARE",
                   help="share of training windows with a bar drawn over part of the view "
                        "(0 = off; default 0.5)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--quiet", action="store_true", help="no progress output (default: progress)")
    _config_arg(p)


@command("eval", "metrics, confusion matrix, per-modality ablation",
         "streamfuse.commands.evaluate:run",
         "streamfuse eval --model /var/lib/streamfuse/model --recordings /data/avdigits/test "
         "--report /tmp/report")
def _eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="DIR", help="model artifact directory")
    p.add_argument("--recordings", nargs="+", required=True, metavar="PATH",
                   help="test recordings (files, or directories of *.mcap)")
    p.add_argument("--labels", metavar="F", default=None,
                   help="labels CSV (default: labels.csv in the recordings' directory, "
                        "else the label messages in the recordings)")
    p.add_argument("--report", metavar="DIR", default=None,
                   help="write report.json, report.md and plots here (default: print only)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    _config_arg(p)


@command("crossval", "leave-one-group-out cross-validation (e.g. by speaker)",
         "streamfuse.commands.crossval:run",
         "streamfuse crossval --recordings /data/avdigits --by speaker --disjoint image "
         "--out /tmp/cv")
def _crossval(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recordings", nargs="+", required=True, metavar="PATH",
                   help="a data set root (its train, val and test are pooled) or directories "
                        "of *.mcap, each with labels.csv and segments.csv")
    p.add_argument("--by", default="speaker", metavar="COLUMN",
                   help="the segments.csv column whose values are the folds: each value is "
                        "tested once, the next one validates, the others train")
    p.add_argument("--disjoint", nargs="+", default=None, metavar="COLUMN",
                   help="segments.csv columns whose values a fold's training windows may not "
                        "share with its test windows (such training windows are dropped; "
                        "default: none)")
    p.add_argument("--train-only", nargs="+", default=None, metavar="PREFIX",
                   help="groups whose value starts with PREFIX (e.g. espeak:) only ever train: "
                        "never a test or validation fold (default: none)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="where crossval.json and crossval.md are written")
    p.add_argument("--modalities", nargs="+", choices=["video", "audio", "text"], default=None,
                   help="modalities the models use (default: all three)")
    p.add_argument("--epochs", type=int, default=20, help="training epochs per fold")
    p.add_argument("--batch-size", type=int, default=64, help="windows per training step")
    p.add_argument("--seed", type=int, default=0, help="random seed (the same for every fold)")
    p.add_argument("--speed", type=float, default=None, metavar="F",
                   help="time-stretch the training log-mels by up to this fraction "
                        "(0 = off; default 0)")
    p.add_argument("--vtlp", type=float, default=None, metavar="F",
                   help="warp the training log-mels' mel axis by up to this fraction "
                        "(0 = off; default 0)")
    p.add_argument("--pitch", type=float, default=None, metavar="BANDS",
                   help="shift the training log-mels' mel axis by up to this many bands "
                        "(0 = off; default 0)")
    p.add_argument("--mix", type=float, default=None, metavar="SHARE",
                   help="share of training windows mixed with another window's sound "
                        "(0 = off; default 0)")
    p.add_argument("--mix-snr", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="SNR range of --mix in dB (default 5 20)")
    p.add_argument("--masks", type=float, default=None, metavar="N",
                   help="SpecAugment band and time masks per training window (default 1)")
    p.add_argument("--audio-norm", choices=["per_window", "per_band"], default="per_window",
                   help="log-mel normalisation: the window standardised, or each band's mean "
                        "removed (cepstral mean normalisation)")
    p.add_argument("--set", action="append", default=None, metavar="FIELD=VALUE",
                   help="any other training option (TrainOptions field) for every fold, e.g. "
                        "n_mels=64 or audio_channels=32,64,128; repeatable (default: none)")
    p.add_argument("--device", default="cpu", help="cpu (the only one for now)")
    p.add_argument("--quiet", action="store_true", help="no progress output (default: progress)")
    _config_arg(p)


@command("tail", "print stream rates, gaps and latency, or classifications as JSON lines",
         "streamfuse.commands.tools:tail", "streamfuse tail --classes --count 10")
def _tail(p: argparse.ArgumentParser) -> None:
    p.add_argument("--topic", metavar="T", default=None,
                   help="topic prefix; under class/ (or with --classes) it prints "
                        "classification JSON lines (default: every topic)")
    p.add_argument("--classes", action="store_true",
                   help="print classifications as JSON lines (default: stream statistics)")
    p.add_argument("--endpoint", metavar="E", default=None,
                   help="read this endpoint (default: bus.results, or bus.output for a --topic "
                        "that only it carries)")
    p.add_argument("--count", type=int, default=None,
                   help="exit after N lines (default: until stopped)")
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="exit after S seconds (default: until stopped)")
    _config_arg(p)


@command("send", "inject one text message", "streamfuse.commands.tools:send",
         'streamfuse send "seven" --source room1')
def _send(p: argparse.ArgumentParser) -> None:
    p.add_argument("text", help="the message (UTF-8)")
    p.add_argument("--source", required=True, help="source name whose text capture takes it")
    p.add_argument("--timeout", type=float, default=3.0, metavar="S",
                   help="wait this long for the text capture's answer")
    _config_arg(p)


@command("label", "publish a label: from now on SOURCE shows LABEL (or --stop)",
         "streamfuse.commands.label:run",
         "streamfuse label room1 seven --for 2\n  streamfuse label room1 seven\n"
         "  streamfuse label room1 --stop")
def _label(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="SOURCE", help="the source the label is about")
    p.add_argument("label", metavar="LABEL", nargs="?", default=None,
                   help="what it shows (1-64 printable characters); a new class if the model "
                        "does not know it yet")
    p.add_argument("--for", dest="duration", type=float, metavar="S", default=None,
                   help="the label lasts S seconds (default: until the source's next label "
                        "or --stop)")
    p.add_argument("--stop", action="store_true",
                   help="end SOURCE's open-ended label now (default: start one)")
    p.add_argument("--at", type=int, metavar="T_NS", default=None,
                   help="start at this epoch time in nanoseconds (default: now)")
    p.add_argument("--wait", type=float, metavar="S", default=3.0,
                   help="how long to listen for a source that is not in the config")
    _config_arg(p)


@command("shadow", "run a candidate model beside the live one on the same windows",
         "streamfuse.commands.models:shadow",
         "streamfuse shadow /var/lib/streamfuse/candidate\n  streamfuse shadow --off")
def _shadow(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR", nargs="?", default=None,
                   help="the candidate's artifact directory (checked against the config first)")
    p.add_argument("--off", action="store_true", help="stop running a shadow model")
    _config_arg(p)


@command("promote", "make the shadow model the live one (the previous is kept)",
         "streamfuse.commands.models:promote_shadow", "streamfuse promote")
def _promote(p: argparse.ArgumentParser) -> None:
    _config_arg(p)


@command("rollback", "make the previous live model live again",
         "streamfuse.commands.models:roll_back", "streamfuse rollback")
def _rollback(p: argparse.ArgumentParser) -> None:
    _config_arg(p)


@command("devices", "list cameras and microphones", "streamfuse.commands.tools:devices",
         "streamfuse devices")
def _devices(p: argparse.ArgumentParser) -> None:
    _config_arg(p)


@command("dataset", "build benchmark recordings and labels", "streamfuse.commands.dataset:run",
         "streamfuse dataset avdigits --out /data/avdigits --segments 600")
def _dataset(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", choices=["avdigits"], help="which data set")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="writes DIR/train, DIR/val, DIR/test (recordings + labels.csv)")
    p.add_argument("--images", default="sklearn", metavar="sklearn|PATH",
                   help="sklearn or an MNIST idx file")
    p.add_argument("--speech", default=None, metavar="DIR",
                   help="FSDD-style wavs (default: espeak-ng)")
    p.add_argument("--noise", default=None, metavar="DIR",
                   help="background sounds (default: generated noise)")
    p.add_argument("--segments", type=int, default=2000, metavar="N", help="segments in all")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--split", choices=["all", "test"], default="all",
                   help="all three splits, or only DIR/test")
    p.add_argument("--synthetic-voices", type=int, default=None, metavar="N",
                   help="with --speech: add N synthetic voices (1-16: 12 espeak-ng voices, "
                        "then 4 flite voices) as training-only speakers named espeak:VOICE "
                        "or flite:VOICE, speaking --synthetic-segments more train segments "
                        "(default: none)")
    p.add_argument("--synthetic-segments", type=int, default=None, metavar="M",
                   help="segments the synthetic voices speak, added to the train split "
                        "(default 500 with --synthetic-voices)")
    p.add_argument("--synthetic-full-band", action="store_true",
                   help="keep the synthetic voices' full band (default: band-limited to the "
                        "recorded speech's, 4 kHz for FSDD's 8 kHz wavs)")
    _config_arg(p)


@command("demo", "build demo data, train or reuse a model, replay it through the daemon",
         "streamfuse.commands.demo:run", "streamfuse demo --small")
def _demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--small", action="store_true", help="a reduced size for tests (default: full)")
    p.add_argument("--live", action="store_true",
                   help="use the configured camera and microphone (default: a replay)")
    p.add_argument("--cache", metavar="DIR", default=None,
                   help="where data and the model are kept (default: ~/.cache/streamfuse/demo)")
    p.add_argument("--data", metavar="DIR", default=None,
                   help="a directory of real media: fsdd/, mnist/, sounds/ "
                        "(default: espeak-ng speech and scikit-learn digits)")
    p.add_argument("--keep", action="store_true",
                   help="after the replay, keep the daemon and its web console up until Ctrl-C")
    _config_arg(p)


@command("keys", "CurveZMQ keys: `keys generate DIR`", "streamfuse.commands.keys:run",
         "streamfuse keys generate /etc/streamfuse/keys --name server")
def _keys(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["generate"], help="what to do")
    p.add_argument("dir", metavar="DIR", help="where NAME.key and NAME.key_secret are written")
    p.add_argument("--name", default="streamfuse", help="file name of the key pair")


@command("config", "validate the config, or print it with where each value came from",
         "streamfuse.commands.config:run",
         "streamfuse config check /etc/streamfuse/streamfuse.toml\n"
         "  STREAMFUSE_FUSION_DEVICE=cpu streamfuse config show")
def _config(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["check", "show"],
                   help="check: validate (exit 0, or 2 naming the key); show: the effective "
                        "config as TOML, each value marked default, file or the variable that "
                        "set it")
    p.add_argument("file", nargs="?", metavar="F", default=None,
                   help="TOML config (default: $STREAMFUSE_CONFIG, "
                        "/etc/streamfuse/streamfuse.toml if present, else built-in defaults)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamfuse", formatter_class=HelpFormatter,
                                     description="Real-time multimodal sensor fusion daemon.",
                                     epilog="Example:\n  streamfuse demo\n\n"
                                            "streamfuse COMMAND --help shows a command's options.")
    parser.add_argument("--version", action="version", version=f"streamfuse {__version__}")
    parser.add_argument("--log-level", default=None, metavar="LEVEL",
                        help=f"{', '.join(logs.LEVELS)} (default: $STREAMFUSE_LOG, else INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                help="one of these; streamfuse COMMAND --help for its options")
    for name, cmd in COMMANDS.items():
        cmd.adder(sub.add_parser(name, help=cmd.help, description=cmd.help,
                                 formatter_class=HelpFormatter,
                                 epilog=f"Example:\n  {cmd.example}"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        logs.setup(level=args.log_level)
    except ValueError as e:
        print(f"streamfuse: {e}", file=sys.stderr)
        return EXIT_USAGE
    cmd = COMMANDS[args.command]
    try:
        cfg = load(getattr(args, "config", None)) if hasattr(args, "config") else Config()
        module_name, func_name = cmd.target.split(":")
        if args.command in TRAINING_COMMANDS:
            # Before torch loads: spinning OpenMP threads on a busy 2-core host ran a
            # training step ~7x slower than one thread; passive waiting made two the fastest.
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        func = getattr(importlib.import_module(module_name), func_name)
        code = int(func(args, cfg) or 0)
    except (ConfigError, UsageError) as e:
        print(f"streamfuse {args.command}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ModuleNotFoundError as e:
        hint = missing_extra(e.name or "")
        if hint is None:
            raise
        print(f"streamfuse {args.command}: {hint}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    # A command that stops cleanly on Ctrl-C still reports it, as a shell expects.
    return EXIT_INTERRUPTED if code == EXIT_OK and signals.interrupted.is_set() else code


if __name__ == "__main__":
    sys.exit(main())

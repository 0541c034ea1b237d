"""The command layer turns parsed arguments into the typed parameters of the code below it."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamfuse import cli
from streamfuse.capture.label import LabelUsageError, build_message
from streamfuse.capture.tools import tail_endpoint
from streamfuse.config import Config
from streamfuse.usage import UsageError
from streamfuse.wire.schema import LabelHeader

NOW = 1_800_000_000 * 10**9


def _args(*argv: str):  # type: ignore[no-untyped-def]
    return cli.build_parser().parse_args(list(argv))


def test_a_data_set_root_trains_on_its_train_split_and_validates_on_its_val_split(
        tmp_path: Path) -> None:
    from streamfuse.commands.train import data

    root = tmp_path / "avdigits"
    (root / "train").mkdir(parents=True)
    (root / "val").mkdir()
    plain = tmp_path / "extra.mcap"
    d = data(_args("train", "--recordings", str(root), str(plain), "--out", "m"))
    assert d.recordings == [str(root / "train"), str(plain)]
    assert d.val_recordings == [str(root / "val")]
    assert (d.labels, d.val_labels) == (None, None)
    given = data(_args("train", "--recordings", str(root), "--val-recordings", "v.mcap",
                       "--labels", "l.csv", "--val-labels", "vl.csv", "--out", "m"))
    assert given.recordings == [str(root / "train")] and given.val_recordings == ["v.mcap"]
    assert (given.labels, given.val_labels) == ("l.csv", "vl.csv")
    files_only = data(_args("train", "--recordings", str(plain), "--out", "m"))
    assert files_only.val_recordings is None  # held out from the training windows


def test_train_flags_become_options_and_the_rest_keep_their_defaults() -> None:
    from streamfuse.commands.train import options
    from streamfuse.train.loop import TrainOptions

    assert options(_args("train", "--recordings", "r", "--out", "m")) == TrainOptions()
    opts = options(_args("train", "--recordings", "r", "--out", "m", "--modalities", "text",
                         "video", "--epochs", "3", "--occlude", "0", "--aux-weight", "0",
                         "--drop-weights", "1", "2", "3", "--fusion", "mean"))
    assert opts == TrainOptions(modalities=("video", "text"), epochs=3, occlude=0.0,
                                aux_weight=0.0, drop_weights=(1.0, 2.0, 3.0), fusion="mean")
    for flags, message in ((["--occlude", "1.5"], "--occlude"), (["--lr", "0"], "--lr"),
                           (["--drop-weights", "1", "0", "1"], "--drop-weights"),
                           (["--aux-weight", "nan"], "--aux-weight")):
        with pytest.raises(UsageError, match=message):
            options(_args("train", "--recordings", "r", "--out", "m", *flags))


def test_replay_timing_flags_are_checked_before_anything_is_read() -> None:
    from streamfuse.commands.replay import bad_timing

    assert bad_timing(_args("replay", "f.mcap")) is None
    assert bad_timing(_args("replay", "f.mcap", "--max")) is None
    assert bad_timing(_args("replay", "f.mcap", "--rate", "0")) == "--rate must be a number > 0"
    assert bad_timing(_args("replay", "f.mcap", "--start", "2", "--end", "1")) == \
        "--end must be after --start"
    assert bad_timing(_args("replay", "f.mcap", "--start", "-1")) == \
        "--start must be a number of seconds >= 0, got -1.0"


def test_a_label_is_built_from_typed_parameters() -> None:
    msg = build_message("room1", "seven", NOW, duration=2.0)
    h = msg.header
    assert isinstance(h, LabelHeader)
    assert (msg.topic, h.label, h.t_ns, h.t_end_ns, h.stop) == (
        "room1/label", "seven", NOW, NOW + 2 * 10**9, False)
    stop = build_message("room1", None, NOW, at=NOW - 5, stop=True).header
    assert isinstance(stop, LabelHeader) and stop.stop and stop.t_ns == NOW - 5
    for kwargs, message in (({"label": None}, "give a LABEL"),
                            ({"label": "x", "stop": True}, "--stop takes no LABEL"),
                            ({"label": "x", "duration": 0.0}, "--for 0.0"),
                            ({"label": "x", "at": 5}, "--at 5")):
        with pytest.raises(LabelUsageError, match=message):
            build_message("room1", now_ns=NOW, **kwargs)  # type: ignore[arg-type]


def test_tail_reads_results_unless_the_topic_is_only_on_the_output() -> None:
    bus = Config().bus
    assert tail_endpoint(bus, None) == bus.results
    assert tail_endpoint(bus, "class/room1") == bus.results
    assert tail_endpoint(bus, "room1/video") == bus.output
    assert tail_endpoint(bus, "room1/video", "tcp://127.0.0.1:1") == "tcp://127.0.0.1:1"


def test_every_command_names_an_entry_of_the_command_layer() -> None:
    import importlib

    for name, cmd in cli.COMMANDS.items():
        module, func = cmd.target.split(":")
        assert module.startswith("streamfuse.commands."), name
        assert callable(getattr(importlib.import_module(module), func)), name

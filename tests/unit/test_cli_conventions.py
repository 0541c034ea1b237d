"""Operator conventions: help text, exit codes, config check/show, journald log priorities."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from streamfuse import cli, config, logs, signals

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def _check_options(p: argparse.ArgumentParser, name: str) -> None:
    formatter = p._get_formatter()
    for action in p._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        what = f"{name} {action.option_strings or action.dest}"
        assert action.help and action.help.strip(), f"{what}: no help"
        shown = formatter._expand_help(action)
        if action.option_strings and not action.required and not _is_flag(action):
            assert "default" in shown, f"{what}: help does not say the default: {shown!r}"


def _is_flag(action: argparse.Action) -> bool:
    return action.nargs == 0  # store_true, help, version: nothing to default


def test_every_option_has_help_with_its_default_and_every_command_an_example() -> None:
    top = cli.build_parser()
    _check_options(top, "streamfuse")
    assert top.epilog and "Example:\n  streamfuse " in top.epilog
    subs = _subparsers()
    assert set(subs) == set(cli.COMMANDS) and "config" in subs
    for name, p in subs.items():
        _check_options(p, f"streamfuse {name}")
        assert p.epilog and p.epilog.startswith("Example:"), f"streamfuse {name}: no example"
        assert f"streamfuse {name}" in p.epilog, f"streamfuse {name}: example runs another command"
        assert "Example:\n  streamfuse" in p.format_help()


def test_an_unknown_log_level_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli.main(["--log-level", "bogus", "config", "check"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == ["streamfuse: --log-level: expected one of DEBUG, INFO, WARNING, "
                                "ERROR, CRITICAL, got 'bogus'"]
    monkeypatch.setenv("STREAMFUSE_LOG", "loud")
    assert cli.main(["config", "check"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "streamfuse: STREAMFUSE_LOG: expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL, "
        "got 'loud'"]


def test_a_misspelled_override_is_one_line_naming_it(capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMFUSE_FUSON_DEVICE", "cpu")
    assert cli.main(["config", "check", str(ROOT / "config/streamfuse.toml")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "streamfuse config: STREAMFUSE_FUSON_DEVICE: no such config key "
        "(did you mean STREAMFUSE_FUSION_DEVICE?)"]
    with pytest.raises(config.ConfigError, match=r"^STREAMFUSE_BOGUS: no such config key"):
        config.parse({}, environ={"STREAMFUSE_BOGUS": "1"})
    with pytest.raises(config.ConfigError, match=r"^STREAMFUSE_SOURCES_NAME: no such config key"):
        config.parse({}, environ={"STREAMFUSE_SOURCES_NAME": "x"})


def test_variables_that_are_not_overrides_are_allowed() -> None:
    env = {v: "x" for v in config.OTHER_VARIABLES} | {"STREAMFUSE_BUS_CURVE_ENABLED": "true"}
    cfg = config.parse({}, environ=env)
    assert cfg.bus.curve.enabled is True


def test_config_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = ROOT / "config/streamfuse.toml"
    assert cli.main(["config", "check", str(good)]) == 0
    assert capsys.readouterr().out == f"{good}: ok\n"
    bad = tmp_path / "bad.toml"
    bad.write_text("[fusion]\nmax_batch = 0\n")
    assert cli.main(["config", "check", str(bad)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "streamfuse config: fusion.max_batch: expected a positive number, got 0"]
    bad.write_text('[bus]\npublic = "tcp://0.0.0.0:5560"\n')  # valid keys, refused at start
    assert cli.main(["config", "check", str(bad)]) == 2
    assert capsys.readouterr().err.startswith(
        "streamfuse config: bus.public: tcp://0.0.0.0:5560 is reachable from the network")


def test_config_show_prints_the_effective_config_and_where_each_value_came_from(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "c.toml"
    f.write_text(textwrap.dedent("""\
        [fusion]
        max_batch = 16
        [[sources]]
        name = "lab"
          [sources.audio]
          samplerate = 48000
        """))
    monkeypatch.setenv("STREAMFUSE_FUSION_DEVICE", "cpu")
    monkeypatch.setenv("STREAMFUSE_BUS_CURVE_ENABLED", "false")
    assert cli.main(["config", "show", str(f)]) == 0
    out = capsys.readouterr().out
    shown = tomllib.loads(out)
    want = config.load(f)
    assert config.parse(shown, path=str(f), environ={}) == want
    assert want.fusion.device == "cpu" and want.fusion.max_batch == 16
    lines = out.splitlines()
    assert 'device = "cpu"  # STREAMFUSE_FUSION_DEVICE' in lines
    assert "enabled = false  # STREAMFUSE_BUS_CURVE_ENABLED" in lines
    assert "max_batch = 16  # file" in lines and "samplerate = 48000  # file" in lines
    assert 'name = "lab"  # file' in lines
    assert "max_delay_ms = 5.0  # default" in lines and "channels = 1  # default" in lines
    assert "[sources.audio]" in lines and "[sources.video]" not in lines


def test_strings_that_need_escaping_survive_show() -> None:
    cfg = config.parse({"fusion": {"model": 'a "b" \\ c\té'}}, environ={})
    assert config.parse(tomllib.loads(config.to_toml(cfg)), environ={}) == cfg


def test_ctrl_c_is_exit_130_without_a_traceback(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(args: argparse.Namespace, cfg: config.Config) -> int:
        raise KeyboardInterrupt

    def stopped_cleanly(args: argparse.Namespace, cfg: config.Config) -> int:
        # what the SIGINT handler of a command's Signals does (not installed here: pytest's stays)
        fake = SimpleNamespace(stop=threading.Event())
        signals.Signals._on_stop(fake, 2, None)  # type: ignore[arg-type]
        return 0

    import streamfuse.commands.config as target

    monkeypatch.setattr(target, "run", interrupted)
    assert cli.main(["config", "check"]) == 130
    monkeypatch.setattr(target, "run", stopped_cleanly)
    monkeypatch.setattr(signals, "interrupted", threading.Event())
    assert cli.main(["config", "check"]) == 130
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("journal", [True, False])
def test_log_lines_carry_syslog_priorities_only_on_journald(tmp_path: Path, journal: bool) -> None:
    out = tmp_path / "stderr"
    code = ("from streamfuse import logs; import logging; logs.setup(level='DEBUG'); "
            "g = logging.getLogger('streamfuse.t'); g.debug('d'); g.info('i'); g.warning('w'); "
            "g.error('e\\nsecond line')")
    with open(out, "w") as f:
        st = os.fstat(f.fileno())
        stream = f"{st.st_dev}:{st.st_ino}" if journal else f"{st.st_dev}:{st.st_ino + 1}"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "JOURNAL_STREAM": stream}
        subprocess.run([sys.executable, "-c", code], stderr=f, env=env, check=True, timeout=60)
    lines = out.read_text().splitlines()
    if journal:
        assert lines == ["<7>streamfuse.t DEBUG d", "<6>streamfuse.t INFO i",
                         "<4>streamfuse.t WARNING w", "<3>streamfuse.t ERROR e", "<3>second line"]
    else:
        assert [line.split(" ", 2)[2] for line in lines[:4]] == [
            "streamfuse.t DEBUG d", "streamfuse.t INFO i", "streamfuse.t WARNING w",
            "streamfuse.t ERROR e"]
        assert not any(line.startswith("<") for line in lines)


def test_journal_stream_must_be_this_stderr(tmp_path: Path) -> None:
    with open(tmp_path / "x", "w") as f:
        st = os.fstat(f.fileno())
        assert logs.stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, fd=f.fileno())
        assert not logs.stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:0"}, fd=f.fileno())
        assert not logs.stderr_is_journal({"JOURNAL_STREAM": "garbage"}, fd=f.fileno())
        assert not logs.stderr_is_journal({}, fd=f.fileno())

"""``streamfuse config check|show [F]``: validate a config, or print the effective one."""

from __future__ import annotations

import argparse

from streamfuse.config import Config, explain, to_toml


def run(args: argparse.Namespace, cfg: Config) -> int:
    """``check``: the file (plus ``STREAMFUSE_*`` overrides) loads as the daemon would
    load it: exit 0, else a :class:`~streamfuse.config.ConfigError` naming the key
    (exit 2). ``show``: the effective config as TOML, each value marked with where it
    came from."""
    from streamfuse.service.broker import check_security  # what `run` refuses at start

    loaded, origins = explain(args.file)
    check_security(loaded.bus)
    source = loaded.path or "built-in defaults"
    if args.action == "check":
        print(f"{source}: ok")
        return 0
    print(f"# streamfuse config: {source}; after each value, where it came from: "
          "default, file, or the STREAMFUSE_ variable that set it")
    print(to_toml(loaded, origins), end="")
    return 0

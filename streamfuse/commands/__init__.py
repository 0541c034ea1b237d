"""The command layer: what turns a command line into calls of the code below it.

One module per command, or per group of commands (``tools``: tail, send, devices;
``models``: shadow, promote, rollback). Each entry takes the parsed arguments of one
command and the loaded config, ``(args: argparse.Namespace, cfg: Config) -> int``: it checks
what only the command line knows (flags, files given), installs the signal handlers of a
long-running command, turns the arguments into typed parameters for the domain code, which
never sees argparse, and returns the exit code. ``streamfuse/cli.py`` declares every
command's options and names its entry here; ``device`` is the one run as
``python -m streamfuse.commands.device`` (by ``streamfuse run``, before it starts anything).
Nothing below this package imports it, and nothing outside it, ``cli.py`` and
``__main__.py`` imports argparse (tests/unit/test_layering.py).
"""

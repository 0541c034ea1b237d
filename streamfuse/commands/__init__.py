"""The command layer: what turns a command line into calls of the code below it.

A module here takes the parsed arguments of one command, checks what only the command line
knows (flags, files given, exit codes), wires the parts together and calls the domain code,
which never sees argparse. ``streamfuse/cli.py`` declares every command's options and points
at its entry; commands not yet moved here still have theirs beside their domain code.
Nothing below this package imports it (tests/unit/test_layering.py).
"""

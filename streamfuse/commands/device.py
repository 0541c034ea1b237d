"""``python -m streamfuse.commands.device SPEC``: which torch device ``fusion.device = SPEC``
gives here (:mod:`streamfuse.fusion.device`), asked in a process of its own so that the
supervisor never imports torch (:func:`streamfuse.service.supervisor.check_device`).

Prints the device (exit 0), or the one-line problem naming ``fusion.device`` (exit 2).
"""

from __future__ import annotations

import sys

from streamfuse.config import ConfigError
from streamfuse.fusion.device import resolve


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m streamfuse.commands.device auto|cpu|cuda|cuda:N",
              file=sys.stderr)
        return 2
    try:
        print(resolve(args[0]))
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

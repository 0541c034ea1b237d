"""The real :class:`Supervisor` over a table of stand-in children (tests/helpers/standin.py).

``python standin_daemon.py CONFIG TABLE.json``: TABLE is
``{"children": [{"name", "role", "phase", "essential", "hup", "source"}...],
"events": PATH, "policy": {...RestartPolicy fields}}``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from streamfuse import config, logs
from streamfuse.service.health import RestartPolicy
from streamfuse.service.processes import ProcessSpec
from streamfuse.service.supervisor import RuntimeFailure, Supervisor
from streamfuse.signals import Signals

HERE = Path(__file__).resolve().parent


def main() -> int:
    logs.setup()
    cfg_path, table_path = sys.argv[1:3]
    cfg = config.load(cfg_path)
    table = json.loads(Path(table_path).read_text())
    specs = [
        ProcessSpec(
            name=c["name"],
            argv=(sys.executable, str(HERE / "standin.py"), c["role"], table["events"], cfg_path,
                  c.get("source", "room1")),
            stop_phase=c["phase"], essential=c.get("essential", False), reload_on_hup=c.get("hup", False),
        )
        for c in table["children"]
    ]
    policy = RestartPolicy(**table.get("policy", {}))
    try:
        return Supervisor(cfg, signals=Signals(reload=True), specs=specs, policy=policy).run()
    except RuntimeFailure as e:
        print(f"streamfuse run: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

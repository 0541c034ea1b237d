#!/usr/bin/env bash
# Set up (if needed) and run `streamfuse demo`. Extra arguments go to the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/streamfuse demo "$@"

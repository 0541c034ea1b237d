#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian machine: system packages and the virtual
# environment in .venv with streamfuse installed editable with the extras that the demo and the
# tests need (a service installs `pip install '.[fusion]'` instead: README, "Install paths").
# Used by scripts/demo.sh, scripts/test.sh and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(libportaudio2 pulseaudio pulseaudio-utils libasound2-plugins espeak-ng flite sox ffmpeg systemd python3-venv nodejs npm chromium)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node and npm may come from elsewhere than apt (they do on some images).
if command -v node >/dev/null && command -v npm >/dev/null; then
  tmp=(); for p in "${missing[@]}"; do [[ "$p" == nodejs || "$p" == npm ]] || tmp+=("$p"); done; missing=("${tmp[@]}")
fi
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.streamfuse-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  echo "setup: installing Python packages into .venv (torch is large: a few minutes the first time)" >&2
  # constraints.txt: the versions the tests last passed with (see its header)
  .venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e ".[fusion,demo,test]" 2>&1 \
    | grep -v "^WARNING: Location" >&2 || true
  .venv/bin/python -c "import streamfuse, torch, torchaudio, zmq, cv2, sounddevice, sklearn, scipy"
  touch "$stamp"
fi

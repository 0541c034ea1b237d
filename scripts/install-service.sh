#!/usr/bin/env bash
# Install streamfuse as a systemd service (README "Install as a service"), as root, from a clone:
#   scripts/install-service.sh [--python PY] [--prefix DIR] [--no-deps]
#
# - The service's virtual environment is built in PREFIX/venv (default /opt/streamfuse/venv) from
#   a system interpreter (default /usr/bin/python3), non-editable, with the `fusion` extra and
#   no test tools. The service runs as the unprivileged user `streamfuse` under ProtectHome=yes:
#   an interpreter under /root, /home or /run/user (pyenv, conda, a user's own build) or behind
#   a directory that user cannot enter would fail at start with 203/EXEC and no log line, so this
#   script refuses it before it changes anything.
# - Creates the `streamfuse` system user (groups video and audio where they exist), installs
#   config/streamfuse.toml as /etc/streamfuse/streamfuse.toml unless one is there, the units in
#   /etc/systemd/system, and links /usr/local/bin/streamfuse.
# - --no-deps: install only streamfuse itself, offline, into PREFIX/venv (made beforehand or
#   here), for hosts whose dependencies come from elsewhere (a local mirror, a shared
#   site-packages named in a .pth file). The test suite installs the service this way.
# It does not enable or start the service: put a model in place first (README).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
PREFIX=/opt/streamfuse
DEPS=1
while [ $# -gt 0 ]; do
  case "$1" in
    --python) PY=$2; shift 2 ;;
    --prefix) PREFIX=$2; shift 2 ;;
    --no-deps) DEPS=0; shift ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install-service: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
die() { echo "install-service: $*" >&2; exit 2; }

[ "$(id -u)" -eq 0 ] || die "run me as root (it creates a user and installs units)"
command -v "$PY" >/dev/null || die "no interpreter $PY (--python PY)"
real=$(readlink -f "$(command -v "$PY")")
case "$real" in
  /root/*|/home/*|/run/user/*)
    die "$PY is $real, under /root, /home or /run/user: the service cannot run it (its unit has ProtectHome=yes, and the streamfuse user may not enter that directory). Build the service's environment from a system interpreter: --python /usr/bin/python3 (apt-get install python3-venv)";;
esac
case "$(readlink -f "$PREFIX")" in
  /root/*|/home/*|/run/user/*) die "--prefix $PREFIX is under /root, /home or /run/user, which the unit hides (ProtectHome=yes)";;
esac
# The service user does not exist yet: an unprivileged user stands in for it.
runuser -u nobody -- "$real" -c 'import encodings, venv' 2>/dev/null \
  || die "$real cannot be run by an unprivileged user (a directory on its path is not searchable by others, or the venv module is missing: apt-get install python3-venv)"

getent passwd streamfuse >/dev/null || useradd --system --no-create-home --user-group \
  --home-dir /var/lib/streamfuse --shell /usr/sbin/nologin streamfuse
for g in video audio; do
  getent group "$g" >/dev/null && usermod -a -G "$g" streamfuse
done

install -d -m 0755 "$PREFIX"
[ -x "$PREFIX/venv/bin/python" ] || "$PY" -m venv "$PREFIX/venv"
if [ "$DEPS" = 1 ]; then
  "$PREFIX/venv/bin/python" -m pip install -q --disable-pip-version-check ".[fusion]"
else
  "$PREFIX/venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-index \
    --no-build-isolation .
fi
rm -rf build ./*.egg-info  # what a non-isolated build leaves in the clone
install -m 0644 README.md "$PREFIX/README.md"
ln -sf "$PREFIX/venv/bin/streamfuse" /usr/local/bin/streamfuse
runuser -u streamfuse -- /usr/local/bin/streamfuse --version >/dev/null \
  || die "the streamfuse user cannot run /usr/local/bin/streamfuse -> $PREFIX/venv/bin/streamfuse"

install -d -m 0750 -g streamfuse /etc/streamfuse
[ -e /etc/streamfuse/streamfuse.toml ] \
  || install -m 0640 -g streamfuse config/streamfuse.toml /etc/streamfuse/streamfuse.toml
install -m 0644 systemd/streamfuse.service systemd/streamfuse-capture@.service /etc/systemd/system/
install -d -m 0755 /usr/local/share/streamfuse/systemd
install -m 0644 systemd/gpu.conf systemd/notify-reload.conf /usr/local/share/streamfuse/systemd/
# systemd 253 and newer: `systemctl reload` returns once the reloaded model serves
version=$(systemctl --version 2>/dev/null | awk 'NR == 1 {print $2}')
if [ "${version:-0}" -ge 253 ] 2>/dev/null; then
  install -D -m 0644 systemd/notify-reload.conf \
    /etc/systemd/system/streamfuse.service.d/notify-reload.conf
fi
[ -d /run/systemd/system ] && systemctl daemon-reload
echo "install-service: installed $(/usr/local/bin/streamfuse --version) in $PREFIX/venv ($real)."
echo "Next: edit /etc/streamfuse/streamfuse.toml, put a model in /var/lib/streamfuse/model,"
echo "      then: systemctl enable --now streamfuse"

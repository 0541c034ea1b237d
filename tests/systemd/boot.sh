#!/bin/bash
# Real systemd as PID 1 in throwaway namespaces, for testing streamfuse's unit files for real
# (start, READY, watchdog, reload, stop, journal) on a machine where systemd is not PID 1.
#
# Started by tests/systemd/nsboot.py, never directly:
#   SCRATCH=<empty dir> UNITS="<unit file> ..." [ENABLE="<name> ..."] [BINDS="<src>:<dst> ..."] \
#   [PREPARE=<bash script>] [TARGET=<unit>] unshare --pid --fork --mount --uts --ipc --net --mount-proc <this file>
# The namespaces' root is an overlay of / whose writes go to a tmpfs under $SCRATCH, so nothing that
# systemd, tmpfiles, sysusers or journald do reaches the host (systemd started on the real root can
# empty the host's /tmp through its tmpfiles rules). The network namespace has loopback only.
# BINDS are bind-mounted read-only into the new root before PREPARE runs, so host paths that the
# overlay cannot show (another filesystem, /tmp, a directory under /root) reach it at a path of
# our choosing. PREPARE runs inside the new root (chroot) before systemd starts: users, config,
# the service's virtual environment. UNITS are copied to /etc/systemd/system, ENABLE names enabled;
# systemd boots into TARGET (default multi-user.target).
set -euo pipefail
: "${SCRATCH:?set SCRATCH to an empty scratch dir}" "${UNITS:?set UNITS to the unit files}"
# PID 1 of a new pid namespace whose /proc shows only it: only `--mount-proc` gives that, and it
# implies a new mount namespace, so nothing below can touch the host's mounts.
[ "$$" = 1 ] && tr '\0' ' ' < /proc/1/cmdline | grep -q 'boot.sh' \
  || { echo "boot.sh: run me through unshare --pid --fork --mount --mount-proc ... (see the header)" >&2; exit 2; }
mount --make-rprivate /
B=$SCRATCH/ovl; mkdir -p "$B"; mount -t tmpfs -o mode=755 tmpfs "$B"
mkdir -p "$B/upper" "$B/work" "$B/root"
mount -t overlay overlay -o lowerdir=/,upperdir="$B/upper",workdir="$B/work" "$B/root"
R=$B/root
mount -t proc proc "$R/proc"
mount --bind /proc/sys "$R/proc/sys" && mount -o remount,bind,ro "$R/proc/sys"
mount --rbind /sys "$R/sys"
mount -t tmpfs -o mode=755 tmpfs "$R/dev"
for n in null zero full random urandom tty; do touch "$R/dev/$n"; mount --bind "/dev/$n" "$R/dev/$n"; done
mkdir -p "$R/dev/pts" "$R/dev/shm"; mount -t devpts -o newinstance,ptmxmode=0666 devpts "$R/dev/pts"; ln -sf pts/ptmx "$R/dev/ptmx"
mount -t tmpfs tmpfs "$R/dev/shm"
for d in run tmp; do mount -t tmpfs -o mode=1777 tmpfs "$R/$d"; done
for b in ${BINDS:-}; do
  src=${b%%:*}; dst=$R${b#*:}
  if [ -d "$src" ]; then mkdir -p "$dst"; else mkdir -p "$(dirname "$dst")"; touch "$dst"; fi
  mount --bind "$src" "$dst"; mount -o remount,bind,ro "$dst"
done
mkdir -p "$R/etc/systemd/system/multi-user.target.wants"
for u in $UNITS; do cp "$u" "$R/etc/systemd/system/$(basename "$u")"; done
for name in ${ENABLE:-}; do  # an instance (unit@i.service) links to its template (unit@.service)
  ln -sf "/etc/systemd/system/$(echo "$name" | sed 's/@[^.]*\./@./')" "$R/etc/systemd/system/multi-user.target.wants/$name"
done
if [ -n "${PREPARE:-}" ]; then
  cp "$PREPARE" "$R/.prepare.sh"; chroot "$R" /bin/bash /.prepare.sh; rm -f "$R/.prepare.sh"
fi
mkdir -p "$R/.oldroot"; cd "$R"; pivot_root . .oldroot; umount -l /.oldroot; rmdir /.oldroot
exec env -i container=systemd-ns PATH=/usr/sbin:/usr/bin:/sbin:/bin /lib/systemd/systemd --system --unit="${TARGET:-multi-user.target}" --log-target=null --show-status=no

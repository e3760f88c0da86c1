#!/bin/bash
# boot.sh NAME PIDFILE [LOG] -- boots systemd as PID 1 in private pid+mount+uts+cgroup namespaces.
#
# The project's copy of shared/reference/systemd-in-namespace.sh; tests/systemd_ns/mod.rs runs
# it and tears it down. Never boot systemd without this isolation: its boot would run tmpfiles
# against the host (wiping /tmp) and start every installed service.
#
# What the namespace shares with the host: the file system (except /run, /tmp and
# /etc/systemd/system, which are fresh tmpfs), the network, the clock. What it does not: PIDs,
# mounts, hostname, cgroups (its root is /sys/fs/cgroup/unified/NAME; cgroup.kill there ends
# every process in it).
#
# Writes the outside PID of `unshare` to PIDFILE; the namespace's PID 1 is its only child. When
# unshare dies, so does PID 1 (--kill-child), and with it every process in the namespace.
set -e
NAME=$1; PIDFILE=$2; LOG=${3:-/dev/null}
CG=/sys/fs/cgroup/unified/$NAME
mkdir -p "$CG"; echo $$ > "$CG/cgroup.procs"   # cgroupns root = this child cgroup
echo $$ > "$PIDFILE"                            # exec keeps the PID: this is unshare's PID
exec unshare --pid --fork --kill-child --mount --uts --cgroup --mount-proc --propagation private \
  env -i container=uwtest PATH=/usr/sbin:/usr/bin:/sbin:/bin bash -c '
set -e
mount -t tmpfs -o mode=755  tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp                 # tmpfiles.d "D /tmp" would wipe the host /tmp
mount -t tmpfs -o mode=755  tmpfs /etc/systemd/system  # hide the host enablements (apache2, etcd, timers...)
umount -R /sys/fs/cgroup
mount -t cgroup2 cgroup2 /sys/fs/cgroup                # pure cgroup2, rooted at our cgroupns
mkdir -p /run/systemd/system /run/systemd/journald.conf.d
printf "[Journal]\nStorage=volatile\n" > /run/systemd/journald.conf.d/volatile.conf
printf "[Unit]\nDescription=test target\nRequires=basic.target\nAfter=basic.target\nWants=dbus.socket\nAllowIsolate=yes\n" \
  > /run/systemd/system/uwtest.target
# Masked: whatever would touch the host (sysctl, modules, udev, clock, tmpfiles) or is useless here.
for u in systemd-timesyncd.service systemd-pstore.service systemd-sysctl.service systemd-binfmt.service \
  proc-sys-fs-binfmt_misc.automount systemd-modules-load.service kmod-static-nodes.service systemd-firstboot.service \
  systemd-sysusers.service systemd-machine-id-commit.service systemd-random-seed.service systemd-repart.service \
  systemd-pcrphase-sysinit.service systemd-pcrphase.service systemd-tmpfiles-setup.service \
  systemd-tmpfiles-setup-dev.service systemd-tmpfiles-clean.timer systemd-udevd.service systemd-udevd-control.socket \
  systemd-udevd-kernel.socket systemd-udev-trigger.service systemd-udev-settle.service systemd-remount-fs.service \
  systemd-update-utmp.service systemd-journal-flush.service timers.target podman.socket \
  sys-kernel-config.mount sys-kernel-debug.mount sys-kernel-tracing.mount sys-fs-fuse-connections.mount dev-hugepages.mount; do
  ln -sf /dev/null /run/systemd/system/$u
done
exec /lib/systemd/systemd --system --unit=uwtest.target
' >"$LOG" 2>&1

#!/usr/bin/env bash
# The real-systemd test: boot a minimal Debian 12 (systemd 252) in systemd-nspawn,
# run the shipped systemd/install.sh inside, and check what an operator relies on
# (systemd/container-checks.sh, run inside): install, socket permissions and
# activation, refusal for non-members, ten restarts in a row, eight
# stop-then-activate cycles, the watchdog, reload of a good and a bad
# configuration, a crash loop and the documented recovery, and a stop that leaves
# no process of the service's user. Prints the figures (install seconds and
# package count, activation latency, restart and stop times) and exits non-zero
# if any check failed.
#
#   sudo systemd/test-in-container.sh
#
# As root, with debootstrap and systemd-container (systemd-nspawn) installed. The
# base root (debootstrap --variant=minbase of bookworm, with systemd) is cached in
# $WA_NSPAWN_CACHE (default /var/cache/wa-daemon-nspawn), outside the checkout;
# each run works on an overlay of it in a temporary directory and removes the
# overlay, the mount and every container process when it ends, also on failure or
# interruption. The container shares the host's network (apt, pip); the host's
# /etc/pip.conf and CA bundle are passed in so pip works wherever it works here.
set -euo pipefail

say() { printf 'test-in-container: %s\n' "$*"; }
die() { say "$*" >&2; exit 2; }

[ "$(id -u)" -eq 0 ] || die "run as root"
command -v debootstrap >/dev/null || die "debootstrap is missing (apt-get install debootstrap)"
command -v systemd-nspawn >/dev/null || die "systemd-nspawn is missing (apt-get install systemd-container)"

CHECKOUT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${WA_NSPAWN_CACHE:-/var/cache/wa-daemon-nspawn}
BASE=$CACHE/bookworm-base
MIRROR=${WA_NSPAWN_MIRROR:-http://deb.debian.org/debian}
LIMIT=${WA_NSPAWN_TIMEOUT:-1800}  # seconds for the whole run inside the container

# ---- the cached base root ----
if [ ! -e "$BASE/.complete" ]; then
    say "debootstrap bookworm into $BASE (once; cached)"
    mkdir -p "$CACHE"
    rm -rf "$BASE.tmp"
    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus bookworm "$BASE.tmp" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
        || die "debootstrap failed: see $CACHE/debootstrap.log"
    rm -rf "$BASE"
    mv "$BASE.tmp" "$BASE"
    touch "$BASE/.complete"
fi

# ---- an overlay of it, and cleanup whatever happens ----
WORK=$(mktemp -d /var/tmp/wa-daemon-nspawn.XXXXXX)
ROOTFS=$WORK/root
OUT=$WORK/out
mkdir -p "$WORK/upper" "$WORK/work" "$ROOTFS" "$OUT"
nspawn_pid=
tail_pid=
cleanup() {
    local rc=$?
    [ -z "$tail_pid" ] || kill "$tail_pid" 2>/dev/null || true
    if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
        # The container's init is nspawn's child; killing it ends the whole PID namespace.
        init=$(pgrep -P "$nspawn_pid" || true)
        kill -TERM "$nspawn_pid" 2>/dev/null || true
        for _ in $(seq 20); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$nspawn_pid" 2>/dev/null || true
        [ -z "$init" ] || kill -KILL "$init" 2>/dev/null || true
        wait "$nspawn_pid" 2>/dev/null || true
    fi
    if mountpoint -q "$ROOTFS"; then
        umount "$ROOTFS" 2>/dev/null || umount -l "$ROOTFS"
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mount -t overlay overlay -o "lowerdir=$BASE,upperdir=$WORK/upper,workdir=$WORK/work" "$ROOTFS"

# The checkout, as an operator would have it (no venv, no caches).
mkdir -p "$ROOTFS/usr/local/src/wa-daemon"
tar -C "$CHECKOUT" --exclude=./.venv --exclude=./.git --exclude=./build --exclude='*.egg-info' \
    --exclude='__pycache__' --exclude=.pytest_cache --exclude=.mypy_cache --exclude=.ruff_cache \
    --exclude=.hypothesis -cf - . | tar -C "$ROOTFS/usr/local/src/wa-daemon" -xf -
# pip inside works as pip here: same configuration, same trusted certificates.
[ ! -f /etc/pip.conf ] || cp /etc/pip.conf "$ROOTFS/etc/pip.conf"
cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/host-ca-certificates.crt" 2>/dev/null || true
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf" 2>/dev/null || true
echo wa-test >"$ROOTFS/etc/hostname"
echo "127.0.1.1 wa-test" >>"$ROOTFS/etc/hosts"

# The checks run as a service once the container has booted; they end the
# container with their exit status (`systemctl exit`).
cat >"$ROOTFS/etc/systemd/system/wa-container-checks.service" <<EOF
[Unit]
Description=wa-daemon container checks
After=multi-user.target
[Service]
Type=exec
Environment=PIP_CERT=/etc/host-ca-certificates.crt WA_CHECK_TIMEOUT=$LIMIT
ExecStart=/bin/bash /usr/local/src/wa-daemon/systemd/container-checks.sh /wa-out
EOF
mkdir -p "$ROOTFS/etc/systemd/system/multi-user.target.wants"
ln -sf ../wa-container-checks.service "$ROOTFS/etc/systemd/system/multi-user.target.wants/wa-container-checks.service"

say "booting Debian 12 in systemd-nspawn (overlay in $WORK); log follows"
touch "$OUT/checks.log"
tail -n +1 -f "$OUT/checks.log" &
tail_pid=$!
systemd-nspawn --register=no --keep-unit --quiet -D "$ROOTFS" -M "wa-test-$$" --bind="$OUT:/wa-out" \
    -b --console=pipe >"$OUT/console.log" 2>&1 </dev/null &
nspawn_pid=$!
status=0
timeout_wait=$(( LIMIT + 120 ))
for _ in $(seq "$timeout_wait"); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 1; done
if kill -0 "$nspawn_pid" 2>/dev/null; then
    say "the container did not finish within $timeout_wait s"
    status=124
else
    wait "$nspawn_pid" || status=$?
fi
nspawn_pid=
sleep 0.5
kill "$tail_pid" 2>/dev/null || true
wait "$tail_pid" 2>/dev/null || true
tail_pid=
if [ ! -s "$OUT/checks.log" ]; then
    say "the checks never ran; the container's console:"
    tail -n 50 "$OUT/console.log" >&2
    [ "$status" -ne 0 ] || status=1
fi
say "exit status $status"
exit "$status"

#!/usr/bin/env bash
# Run inside the booted container by systemd/test-in-container.sh (as a service
# of the container's systemd, as root): installs wa-daemon with the shipped
# install.sh and checks it under a real systemd 252. Writes its log to OUT/checks.log
# and ends the container with the number of failed checks as exit status.
set -uo pipefail
OUT=${1:-/wa-out}
exec >>"$OUT/checks.log" 2>&1

SRC=/usr/local/src/wa-daemon
WACTL=/opt/wa-daemon/bin/wactl
SOCK=/run/wa-daemon/wa-daemon.sock
failures=0
log() { printf '%s %s\n' "$(date +%T)" "$*"; }
pass() { log "PASS $*"; }
fail() { log "FAIL $*"; failures=$((failures + 1)); }
check() {  # check DESCRIPTION COMMAND...: pass when COMMAND succeeds
    local what=$1; shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}
figure() { log "FIGURE $*"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
finish() {
    log "$failures check(s) failed"
    systemctl --no-pager status wa-daemon.socket wa-daemon.service >"$OUT/status.txt" 2>&1 || true
    journalctl --no-pager -u wa-daemon.service -u wa-daemon.socket >"$OUT/journal.txt" 2>&1 || true
    systemctl exit "$(( failures > 100 ? 100 : failures ))"
}
trap finish EXIT

as() {  # as USER COMMAND...: run as USER with that user's groups
    local user=$1; shift
    setpriv --reuid="$user" --regid="$user" --init-groups env -i PATH=/usr/bin:/bin HOME=/ "$@"
}
both_active() {
    systemctl is-active --quiet wa-daemon.socket && systemctl is-active --quiet wa-daemon.service && [ -S "$SOCK" ]
}
wait_for() {  # wait_for SECONDS COMMAND...
    local until=$(( $(date +%s) + $1 )); shift
    until "$@"; do [ "$(date +%s)" -lt "$until" ] || return 1; sleep 0.2; done
}
main_pid() { systemctl show -P MainPID wa-daemon.service; }

log "systemd $(systemctl --version | head -n1 | cut -d' ' -f2); Debian $(cat /etc/debian_version)"
wait_for 120 sh -c 'systemctl is-system-running | grep -qE "running|degraded"' || log "system not up yet: $(systemctl is-system-running)"

# ---- install ----
packages_before=$(dpkg-query -W -f '${db:Status-Abbrev}\n' | grep -c '^ii')
t0=$(now)
if "$SRC/systemd/install.sh" >"$OUT/install.log" 2>&1; then pass "install.sh"; else fail "install.sh (see install.log)"; fi
figure "install seconds: $(since "$t0") (apt, venv from PyPI, units, start)"
grep -E '^install.sh: installed [0-9]+ Debian packages' "$OUT/install.log" | sed 's/^/    /'
figure "Debian packages: $packages_before before, $(dpkg-query -W -f '${db:Status-Abbrev}\n' | grep -c '^ii') after"
for p in avahi-daemon polkitd upower; do
    check "no $p installed" sh -c "! dpkg-query -W -f '\${db:Status-Abbrev}' $p 2>/dev/null | grep -q '^ii'"
done
check "both units active after install" wait_for 60 both_active
check "socket is wa-daemon:wa-clients 0660" sh -c "[ \"\$(stat -c '%U:%G %a' $SOCK)\" = 'wa-daemon:wa-clients 660' ]"

# ---- access: a wa-clients member, and someone else ----
useradd -m -G wa-clients member
useradd -m other
useradd -m -G wa-clients myapp
check "a wa-clients member's wactl ping (socket found by itself)" as member "$WACTL" ping
out=$(as other "$WACTL" ping 2>&1); rc=$?
check "another user is refused (exit 5, Permission denied)" [ "$rc" = 5 ] && [[ "$out" == *"Permission denied"* ]]
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends sudo >/dev/null 2>&1
# docs/operations.md and docs/systemd.md, as written:
check "sudo -u myapp env WA_DAEMON_SOCKET=... wactl ping (the docs' line)" \
    sudo -u myapp env WA_DAEMON_SOCKET=/run/wa-daemon/wa-daemon.sock /opt/wa-daemon/bin/wactl ping

# ---- socket activation ----
systemctl stop wa-daemon.service
check "stopping the service keeps the socket" sh -c "systemctl is-active --quiet wa-daemon.socket && [ -S $SOCK ]"
t0=$(now)
check "activation by a member's call" as member "$WACTL" ping
figure "socket activation latency (stopped service -> first answer): $(since "$t0") s"

# ---- ten restarts in a row ----
ok=1; times=()
for i in $(seq 10); do
    t0=$(now)
    systemctl restart wa-daemon.service || { ok=0; log "restart $i failed"; }
    times+=("$(since "$t0")")
done
check "ten restarts in a row succeed" [ "$ok" = 1 ]
check "after them both units are active and the socket is there" both_active
check "and a member's call is answered" as member "$WACTL" ping
figure "restart seconds (systemctl restart, no sessions): ${times[*]}"

# ---- eight stop-then-activate cycles ----
ok=1; times=()
for i in $(seq 8); do
    systemctl stop wa-daemon.service
    t0=$(now)
    as member "$WACTL" ping >/dev/null || { ok=0; log "activation $i failed"; }
    times+=("$(since "$t0")")
done
check "eight stop-then-activate cycles succeed" [ "$ok" = 1 ]
check "after them both units are active" both_active
figure "activation seconds: ${times[*]}"

# ---- reload: a good file, then a bad one ----
conf=/etc/wa-daemon/config.toml
cp "$conf" "$conf.orig"
pid=$(main_pid)
sed -i 's/^log_level = .*/log_level = "debug"/' "$conf"
check "reload of a good configuration" systemctl reload wa-daemon.service
echo 'log_level = 5' >"$conf"
if systemctl reload wa-daemon.service 2>/dev/null; then fail "reload of a bad configuration fails"; else pass "reload of a bad configuration fails"; fi
check "the daemon kept running through both reloads (same MainPID)" [ "$(main_pid)" = "$pid" ]
check "and answers" as member "$WACTL" ping
cp "$conf.orig" "$conf"

# ---- the watchdog ----
restarts=$(systemctl show -P NRestarts wa-daemon.service)
pid=$(main_pid)
kill -STOP "$pid"
t0=$(now)
wait_for 60 sh -c "[ \"\$(systemctl show -P MainPID wa-daemon.service)\" != $pid ]"
figure "watchdog: SIGABRT and restart scheduled $(since "$t0") s after the stall (WatchdogSec=30s, keep-alive every 15 s)"
check "the watchdog killed the stalled daemon" sh -c "journalctl -u wa-daemon.service --no-pager | grep -q \"Failed with result 'watchdog'\""
check "and systemd restarted it" wait_for 60 both_active
check "restart counter went up" [ "$(systemctl show -P NRestarts wa-daemon.service)" -gt "$restarts" ]
check "a member's call is answered after the watchdog restart" as member "$WACTL" ping

# ---- a crash loop, then the documented recovery ----
# The real daemon, killed (SIGSEGV) as soon as each start is ready: Restart=on-failure
# brings it back every 10 s until the start limit (5 starts in 10 min) refuses.
systemctl restart wa-daemon.service  # a clean stop: the count starts from here
t0=$(now)
last=
for _ in $(seq 400); do
    state=$(systemctl show -P ActiveState wa-daemon.service)
    [ "$state" = failed ] && break
    pid=$(main_pid)
    if [ "$state" = active ] && [ "$pid" != 0 ] && [ "$pid" != "$last" ]; then
        kill -SEGV "$pid" 2>/dev/null && last=$pid
    fi
    sleep 0.2
done
figure "crash loop: the service gave up after $(since "$t0") s"
check "a crash loop ends with the service failed" [ "$(systemctl show -P ActiveState wa-daemon.service)" = failed ]
check "and the socket failed with it (service-start-limit-hit)" \
    [ "$(systemctl show -P Result wa-daemon.socket)" = service-start-limit-hit ]
check "the socket file is gone" [ ! -e "$SOCK" ]
out=$(as member "$WACTL" ping 2>&1); rc=$?
log "a member's wactl now says (exit $rc): $out"
check "wactl names both paths and the system service's" \
    sh -c "[ $rc = 5 ] && printf '%s' \"\$1\" | grep -q 'nor at /run/wa-daemon/wa-daemon.sock (the system service' " _ "$out"
# docs/systemd.md, operations.md, troubleshooting.md, as written:
systemctl reset-failed wa-daemon.service wa-daemon.socket
systemctl start wa-daemon.socket wa-daemon.service
check "the documented recovery brings both units back" wait_for 60 both_active
check "and clients with them" as member "$WACTL" ping

# ---- stop ----
t0=$(now)
systemctl stop wa-daemon.socket wa-daemon.service
figure "stop seconds (socket and service, no sessions): $(since "$t0")"
check "stopped: no process of wa-daemon left" sh -c '! pgrep -u wa-daemon >/dev/null'
check "stopped: the socket file is removed" [ ! -e "$SOCK" ]

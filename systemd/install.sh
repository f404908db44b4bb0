#!/usr/bin/env bash
# Install (or upgrade) wa-daemon as a systemd service on Debian, from a checkout.
# Idempotent: run it again after `git pull` to upgrade. See docs/systemd.md.
#
#   sudo systemd/install.sh [--prefix DIR] [--root DIR] [--no-venv] [--no-start]
#
#   --prefix DIR  the venv the daemon runs from (default /opt/wa-daemon); the
#                 units' ExecStart= and ExecReload= are rewritten to match.
#                 It must not lie under /home, /root or /run/user
#                 (the unit has ProtectHome=yes).
#   --root DIR    install under a staging root (packaging, tests): no apt-get,
#                 no user creation, no systemctl. The venv, if built, is built
#                 at DIR/PREFIX and only works there.
#   --no-venv     do not create or upgrade the venv (no pip, no network): only
#                 the units, the sysusers file and the example configuration.
#                 Also WA_DAEMON_INSTALL_NO_VENV=1.
#   --no-start    do not enable and start the units, even where systemd runs.
#
# The venv is built with Debian's /usr/bin/python3 (PYTHON=... overrides): its
# interpreter must stay visible to the sandbox, so not one under /root or /home
# (pyenv, a user's build) that ProtectHome=yes hides.
set -euo pipefail

say() { printf 'install.sh: %s\n' "$*"; }

# True when the path lies where ProtectHome=yes hides it from the service.
hidden() {
    case "$1/" in /home/*|/root/*|/run/user/*) return 0 ;; *) return 1 ;; esac
}

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

CHECKOUT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SRC="$CHECKOUT/systemd"
PREFIX=/opt/wa-daemon
ROOT=
NO_VENV=${WA_DAEMON_INSTALL_NO_VENV:-0}
[ "$NO_VENV" = 1 ] || NO_VENV=0
START=1
PYTHON=${PYTHON:-/usr/bin/python3}

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) PREFIX=${2:?--prefix needs a directory}; shift 2 ;;
        --prefix=*) PREFIX=${1#*=}; shift ;;
        --root) ROOT=${2:?--root needs a directory}; shift 2 ;;
        --root=*) ROOT=${1#*=}; shift ;;
        --no-venv) NO_VENV=1; shift ;;
        --no-start) START=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

case "$PREFIX" in
    /*) ;;
    *) echo "install.sh: --prefix must be an absolute path" >&2; exit 2 ;;
esac
case "$PREFIX" in
    *[!A-Za-z0-9/._-]*) echo "install.sh: --prefix may only contain letters, digits and / . _ -" >&2; exit 2 ;;
esac
PREFIX=${PREFIX%/}
if hidden "$PREFIX"; then
    echo "install.sh: $PREFIX is hidden from the service by ProtectHome=yes; pick another --prefix" >&2
    exit 2
fi
if [ -n "$ROOT" ]; then
    mkdir -p "$ROOT"
    ROOT=$(cd "$ROOT" && pwd)
    [ "$ROOT" != / ] || ROOT=
fi
if [ -z "$ROOT" ] && [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (or with --root DIR to stage the files)" >&2
    exit 1
fi

# Install SRC as DEST with MODE, only when the content differs (idempotent).
put() {
    local src=$1 dest=$2 mode=$3
    mkdir -p "$(dirname "$dest")"
    if [ -f "$dest" ] && cmp -s "$src" "$dest"; then
        chmod "$mode" "$dest"
        return 0
    fi
    install -m "$mode" "$src" "$dest"
    say "installed $dest"
}

# The Debian packages installed (status ii), one per line, sorted.
installed_packages() { dpkg-query -W -f '${db:Status-Abbrev} ${Package}\n' | awk '$1 == "ii" {print $2}' | sort; }

# ---- Debian packages: Chromium (the browser the daemon drives) and venv ----
# Without Recommends: a headless daemon needs none of them (avahi-daemon, a
# network-facing mDNS responder, polkitd, upower, a notification daemon...), and
# headless Chromium renders with the font its Depends bring (fonts-dejavu-core).
if [ -z "$ROOT" ]; then
    need=()
    [ -x /usr/bin/chromium ] || need+=(chromium)
    [ "$PYTHON" != /usr/bin/python3 ] || "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
    if [ ${#need[@]} -gt 0 ]; then
        say "apt-get install --no-install-recommends ${need[*]}"
        before=$(installed_packages)
        started=$(date +%s)
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
        added=$(comm -13 <(printf '%s\n' "$before") <(installed_packages))
        say "installed $(printf '%s\n' "$added" | grep -c .) Debian packages in $(( $(date +%s) - started )) s:"
        printf '%s\n' "$added" | paste -sd ' ' | fold -s -w 96 | sed 's/^/install.sh:   /'
    fi
fi

# ---- Chromium's own sandbox needs unprivileged user namespaces ----
# Without them the daemon still runs, with --no-sandbox and a warning (health check
# browser_sandbox, alert WaBrowserSandboxOff): say so now, with the fix.
if [ -z "$ROOT" ]; then
    userns_fix=
    [ "$(cat /proc/sys/kernel/unprivileged_userns_clone 2>/dev/null || echo 1)" = 0 ] \
        && userns_fix="kernel.unprivileged_userns_clone=1"
    [ "$(cat /proc/sys/user/max_user_namespaces 2>/dev/null || echo 1)" = 0 ] \
        && userns_fix="user.max_user_namespaces=15000"
    if [ -n "$userns_fix" ]; then
        say "warning: user namespaces are off: Chromium's own sandbox cannot run, browsers get --no-sandbox"
        say "  allow them: sysctl -w $userns_fix (persist it in /etc/sysctl.d/); see docs/security.md"
    fi
fi

# ---- the venv at PREFIX, with the daemon's extra ----
VENV="$ROOT$PREFIX"
if [ "$NO_VENV" = 1 ]; then
    say "--no-venv: not creating or upgrading $VENV"
else
    if [ -x "$VENV/bin/python" ] && [ -z "$ROOT" ] && hidden "$(readlink -f "$VENV/bin/python")"; then
        echo "install.sh: $VENV runs $(readlink -f "$VENV/bin/python"), which the service cannot see" \
            "(ProtectHome=yes): remove $VENV and run this again" >&2
        exit 1
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        if hidden "$(readlink -f "$(command -v "$PYTHON")")"; then
            echo "install.sh: $PYTHON lies under /root or /home, hidden from the service: set PYTHON=" >&2
            exit 2
        fi
        say "creating the venv $VENV with $PYTHON"
        "$PYTHON" -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # A local directory is always rebuilt and reinstalled: this upgrades.
    "$VENV/bin/python" -m pip install -q --upgrade "${CHECKOUT}[daemon]"
    "$VENV/bin/wa-daemon" --version
fi

# ---- units, with the paths rewritten for --prefix ----
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s#/opt/wa-daemon/#$PREFIX/#g" "$SRC/wa-daemon.service" >"$tmp/wa-daemon.service"
put "$tmp/wa-daemon.service" "$ROOT/etc/systemd/system/wa-daemon.service" 0644
put "$SRC/wa-daemon.socket" "$ROOT/etc/systemd/system/wa-daemon.socket" 0644

# ---- the system user wa-daemon and the group wa-clients ----
put "$SRC/sysusers.d/wa-daemon.conf" "$ROOT/usr/lib/sysusers.d/wa-daemon.conf" 0644
if [ -z "$ROOT" ]; then
    if command -v systemd-sysusers >/dev/null; then
        systemd-sysusers /usr/lib/sysusers.d/wa-daemon.conf
    else
        getent group wa-daemon >/dev/null || groupadd --system wa-daemon
        getent passwd wa-daemon >/dev/null || useradd --system --gid wa-daemon \
            --home-dir /var/lib/wa-daemon --no-create-home --shell /usr/sbin/nologin \
            --comment "wa-daemon WhatsApp Web sessions" wa-daemon
        getent group wa-clients >/dev/null || groupadd --system wa-clients
    fi
fi

# ---- an example configuration, never overwriting the operator's ----
CONF="$ROOT/etc/wa-daemon/config.toml"
mkdir -p "$ROOT/etc/wa-daemon"
if [ -e "$CONF" ]; then
    say "keeping $CONF"
else
    {
        echo "# wa-daemon configuration (docs/configuration.md). Every key is optional;"
        echo "# the service sets WA_DAEMON_SOCKET and WA_DAEMON_STATE_DIR itself."
        echo "# Check a change with: $PREFIX/bin/wa-daemon check-config"
        echo "# then apply it with:  systemctl reload wa-daemon.service"
        echo
        echo 'log_level = "info"'
        if [ -x "$VENV/bin/wa-daemon" ] && defaults=$("$VENV/bin/wa-daemon" check-config --defaults 2>/dev/null); then
            echo
            echo "# The defaults, for reference:"
            printf '%s\n' "$defaults" | sed -e '/^$/d' -e 's/^# //' -e 's/^/# /'
        fi
    } >"$tmp/config.toml"
    install -m 0644 "$tmp/config.toml" "$CONF"
    say "installed $CONF"
fi
if [ -x "$VENV/bin/wa-daemon" ] && [ -z "$ROOT" ]; then
    "$VENV/bin/wa-daemon" check-config "$CONF" >/dev/null
fi

# ---- enable and start, where systemd runs ----
if [ -n "$ROOT" ]; then
    say "staged under $ROOT"
elif [ "$START" = 1 ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    was_active=0
    systemctl is-active --quiet wa-daemon.service && was_active=1
    systemctl enable --now wa-daemon.socket wa-daemon.service
    if [ "$was_active" = 1 ] && [ "$NO_VENV" = 0 ]; then
        say "wa-daemon.service was already running the previous version:"
        say "  systemctl restart wa-daemon.service   # when a short interruption suits you"
    fi
    systemctl --no-pager status wa-daemon.socket wa-daemon.service || true
else
    say "systemd is not running here (or --no-start): to start the daemon later, run"
    say "  systemctl daemon-reload"
    say "  systemctl enable --now wa-daemon.socket wa-daemon.service"
fi
say "let a service use the socket: usermod -aG wa-clients USER (or SupplementaryGroups=wa-clients)"

#!/usr/bin/env bash
# Install neo-edge-agent as a systemd service. Run as root; safe to run again.
#
#   systemd/install.sh                    install here and start it (when systemd runs this machine)
#   systemd/install.sh --no-venv          the same, leaving /opt/neo-edge-agent as it is
#   systemd/install.sh --root DIR         stage the user, directories, configuration and unit under
#                                         DIR (an image being built) and enable it there; no venv
#   systemd/install.sh --check [--root DIR]   only check an installation: exit 1 naming what is wrong
#
# What it makes:
#   user and group neo-agent   system account, home /var/lib/neo-agent, no login shell
#   /opt/neo-edge-agent        a venv (python3.11, or $PYTHON) with this repository installed; root's
#   /var/lib/neo-agent         0700 neo-agent: the job store and job folders
#   /etc/neo-agent             0700 neo-agent
#   /etc/neo-agent/agent.toml  0600 neo-agent: the configuration file, from agent.toml.example (every
#                              key, commented out, state_dir set); written once, never overwritten
#   /etc/neo-agent/agent.env   0600 neo-agent: NEO_AGENT_* settings, over agent.toml; written once, never
#                              overwritten
#   /etc/systemd/system/neo-agent.service
# The configuration belongs to neo-agent so that the agent can read its own settings; inside
# the unit's sandbox (ProtectSystem=strict) it cannot change them.
set -euo pipefail

NAME=neo-agent
PREFIX=/opt/neo-edge-agent
STATE_DIR=/var/lib/neo-agent
CONF_DIR=/etc/neo-agent
UNIT_DIR=/etc/systemd/system
NOLOGIN=/usr/sbin/nologin
PYTHON=${PYTHON:-python3.11}
REPO=$(cd "$(dirname "$0")/.." && pwd)

root=""; venv=1; check=0
while [ $# -gt 0 ]; do
    case "$1" in
        --root) root=${2:?--root needs a directory}; shift 2 ;;
        --root=*) root=${1#--root=}; shift ;;
        --no-venv) venv=0; shift ;;
        --check) check=1; shift ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ -n "$root" ]; then
    root=$(cd "$root" 2>/dev/null && pwd) || { echo "install.sh: --root $root is not a directory" >&2; exit 2; }
    [ "$root" != / ] || root=""
fi
say() { echo "install.sh: $*" >&2; }

# The target system's account entries: the real ones, or those under --root.
entry() {  # entry passwd|group NAME
    if [ -n "$root" ]; then grep "^$2:" "$root/etc/$1" 2>/dev/null || true; else getent "$1" "$2" || true; fi
}

# --- check ------------------------------------------------------------------------------
if [ "$check" -eq 1 ]; then
    problems=0
    problem() { echo "install.sh --check: $*" >&2; problems=$((problems + 1)); }
    expect() {  # expect PATH MODE: owned by neo-agent, with exactly MODE
        local found
        found=$(stat -c '%a %u:%g' "$root$1" 2>/dev/null) || { problem "$1 is missing"; return; }
        [ "$found" = "$2 $uid:$gid" ] || problem "$1 is mode/owner $found, wants $2 $uid:$gid ($NAME)"
    }
    user=$(entry passwd "$NAME")
    if [ -z "$user" ]; then
        problem "no user $NAME"; uid=?; gid=?
    else
        IFS=: read -r _ _ uid gid _ home shell <<<"$user"
        [ "$home" = "$STATE_DIR" ] || problem "$NAME's home is $home, not $STATE_DIR"
        [ "$shell" = "$NOLOGIN" ] || problem "$NAME's shell is $shell, not $NOLOGIN"
    fi
    expect "$STATE_DIR" 700
    expect "$CONF_DIR" 700
    expect "$CONF_DIR/agent.toml" 600
    expect "$CONF_DIR/agent.env" 600
    [ -x "$root$PREFIX/bin/neo-agent" ] || problem "$PREFIX/bin/neo-agent is missing (the venv)"
    if [ -z "$root" ] && [ -e "$PREFIX/bin/python" ]; then
        case "$(readlink -f "$PREFIX/bin/python")" in
            /root/*|/home/*|/run/user/*) problem "$PREFIX/bin/python is under a home directory the service cannot see" ;;
        esac
    fi
    cmp -s "$REPO/systemd/neo-agent.service" "$root$UNIT_DIR/neo-agent.service" \
        || problem "$UNIT_DIR/neo-agent.service is missing or differs from this repository's"
    if [ -z "$root" ] && command -v systemd-analyze >/dev/null && [ -e "$UNIT_DIR/neo-agent.service" ]; then
        out=$(systemd-analyze verify --man=no "$UNIT_DIR/neo-agent.service" 2>&1) || problem "systemd-analyze verify: $out"
    fi
    [ "$problems" -eq 0 ] && { echo "install.sh --check: ok"; exit 0; }
    exit 1
fi

# --- install ----------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || { say "run as root (it creates a system user and writes /etc)"; exit 1; }
umask 022  # the venv and the unit are world-readable; the agent's own files get explicit modes
if [ -n "$root" ] && [ "$venv" -eq 1 ]; then
    say "--root: not building the venv (a venv is not relocatable); build $PREFIX inside the image"
    venv=0
fi
if [ "$venv" -eq 1 ]; then
    # The venv's python links to this interpreter: it must be one the service can see.
    base=$("$PYTHON" -c 'import os, sys; print(os.path.realpath(sys.base_prefix))')
    case "$base/" in
        /root/*|/home/*|/run/user/*)
            say "$PYTHON lives in $base, which the unit's ProtectHome=yes hides from the service;"
            say "use a system Python (PYTHON=/usr/bin/python3.11 $0)"; exit 1 ;;
    esac
fi

# 1. The account.
if [ -z "$(entry passwd "$NAME")" ]; then
    args=(--system --no-log-init --home-dir "$STATE_DIR" --no-create-home --shell "$NOLOGIN" --comment "neo-edge-agent")
    if [ -n "$(entry group "$NAME")" ]; then args+=(--gid "$NAME"); else args+=(--user-group); fi
    [ -z "$root" ] || { mkdir -p "$root/etc"; args+=(--prefix "$root"); }
    useradd "${args[@]}" "$NAME"
    say "created system user $NAME"
fi
IFS=: read -r _ _ uid gid _ <<<"$(entry passwd "$NAME")"

# 2. The code: root's, so the agent cannot change what it runs.
if [ "$venv" -eq 1 ]; then
    [ -x "$PREFIX/bin/python" ] || "$PYTHON" -m venv "$PREFIX"
    "$PREFIX/bin/python" -m pip install --quiet --upgrade pip
    "$PREFIX/bin/python" -m pip install --quiet "$REPO"                                # and its dependencies
    "$PREFIX/bin/python" -m pip install --quiet --no-deps --force-reinstall "$REPO"    # this checkout's code
    say "installed $("$PREFIX/bin/neo-agent" --help >/dev/null && echo "$PREFIX/bin/neo-agent")"
fi

# 3. Directories and configuration: the agent's own, 0700/0600, whatever was there before.
private_dir() {
    mkdir -p "$root$1"
    chown "$uid:$gid" "$root$1"
    chmod 0700 "$root$1"
}
private_dir "$STATE_DIR"
private_dir "$CONF_DIR"
toml_file="$root$CONF_DIR/agent.toml"
if [ ! -e "$toml_file" ]; then
    # The example with the unit's state directory set, so check-config and health see it too.
    (umask 077; sed "s|^#state_dir = .*|state_dir = \"$STATE_DIR\"|" "$REPO/agent.toml.example" >"$toml_file")
    say "wrote $CONF_DIR/agent.toml"
fi
chown "$uid:$gid" "$toml_file"
chmod 0600 "$toml_file"
env_file="$root$CONF_DIR/agent.env"
if [ ! -e "$env_file" ]; then
    (umask 077; cat >"$env_file" <<'EOF'
# neo-edge-agent's settings: NEO_AGENT_* variables, one a line (README.md, "Configuration").
# Read by systemd when the service starts: `systemctl restart neo-agent` after a change.
# Each one set here wins over the same key in /etc/neo-agent/agent.toml, where the rest live.
# The state directory is the unit's (/var/lib/neo-agent); NEO_AGENT_STATE_DIR is not used.
#
#NEO_AGENT_HTTP=127.0.0.1:8573
#NEO_AGENT_HTTP_CREDENTIALS=AKID:SECRET
#NEO_AGENT_REGION=us-east-1
#NEO_AGENT_ACCOUNT=000000000000
#NEO_AGENT_STOP_GRACE_S=10
#NEO_AGENT_MQTT_ENABLED=true
#NEO_AGENT_MQTT_HOST=broker.example
#NEO_AGENT_IOTCORE_ENDPOINT=xxxxxxxx-ats.iot.us-east-1.amazonaws.com
#NEO_AGENT_IOTCORE_THING_NAME=my-device
#NEO_AGENT_IOTCORE_CERT=/etc/neo-agent/device.pem.crt
#NEO_AGENT_IOTCORE_KEY=/etc/neo-agent/private.pem.key
#AWS_SHARED_CREDENTIALS_FILE=/etc/neo-agent/aws-credentials
EOF
    )
    say "wrote $CONF_DIR/agent.env"
fi
chown "$uid:$gid" "$env_file"
chmod 0600 "$env_file"

# 4. The unit.
mkdir -p "$root$UNIT_DIR"
install -m 0644 "$REPO/systemd/neo-agent.service" "$root$UNIT_DIR/neo-agent.service"

if [ -n "$root" ]; then
    if command -v systemctl >/dev/null; then
        systemctl --root="$root" --quiet enable neo-agent.service
        say "staged under $root; neo-agent.service is enabled there and starts at its boot"
    else
        say "staged under $root; enable it there with: systemctl --root=$root enable neo-agent.service"
    fi
elif [ -d /run/systemd/system ]; then  # systemd is PID 1 (sd_booted's test)
    was_active=$(systemctl is-active neo-agent.service 2>/dev/null || true)
    systemctl daemon-reload
    systemctl enable --now neo-agent.service
    if [ "$was_active" = active ]; then
        say "neo-agent was already running the old code: systemctl restart neo-agent (fails a running job)"
    fi
    say "started; see: systemctl status neo-agent; journalctl -u neo-agent"
else
    say "systemd is not running this machine; the unit is installed. Where it runs:"
    say "  systemctl daemon-reload && systemctl enable --now neo-agent"
fi

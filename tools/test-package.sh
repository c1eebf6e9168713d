#!/usr/bin/env bash
# Tests the Debian package for real (run by .ci/run; needs root): builds it from the debug
# binary, installs it with dpkg -i, checks files, owners and modes, runs the installed binary
# (check-config on the installed example, demo, a real --once as the stellantis-sync user against
# the simulator), verifies the installed units, then removes (history and tokens stay) and
# purges (configuration goes; /var/lib/stellantis-sync and the user stay, by design).
# Refuses to run where the package or /var/lib/stellantis-sync already exists.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "test-package: FAIL: $*" >&2; exit 1; }
if [ "$(id -u)" != 0 ]; then
    fail "needs root (dpkg -i, a system user); run it as root, as .ci/run does"
fi
if [[ "$(dpkg-query -W -f '${Status}' stellantis-sync 2>/dev/null)" == *installed* ]]; then
    fail "the stellantis-sync package is installed on this machine; not touching it"
fi
if [ -e /var/lib/stellantis-sync ]; then
    fail "/var/lib/stellantis-sync exists on this machine; not touching it"
fi
for tool in dpkg-deb setpriv systemd-analyze sqlite3; do
    command -v "$tool" >/dev/null || fail "$tool is missing (apt-get install dpkg util-linux systemd sqlite3)"
done

work=$(mktemp -d)
sim_pid=
cleanup() {
    [ -n "$sim_pid" ] && kill "$sim_pid" 2>/dev/null || true
    dpkg --purge stellantis-sync >/dev/null 2>&1 || true
    rm -rf /var/lib/stellantis-sync "$work"
    userdel stellantis-sync 2>/dev/null || true
    groupdel stellantis-sync 2>/dev/null || true
}
trap cleanup EXIT

# With CARGO_TARGET_DIR set (issue 25: the units were written under it, and cargo-deb looks for
# them next to Cargo.toml): a target directory of its own, the debug build linked in.
real_target=$(cargo metadata --format-version 1 --no-deps --locked |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
mkdir "$work/target"
ln -s "$real_target/debug" "$work/target/debug"
rm -rf target/package-units
other=$(CARGO_TARGET_DIR="$work/target" tools/package.sh --debug) ||
    fail "tools/package.sh fails with CARGO_TARGET_DIR set"
[[ "$other" == "$work/target/debian/"*.deb ]] || fail "the package is not under CARGO_TARGET_DIR: $other"
dpkg-deb --contents "$other" >"$work/contents"
for unit in stellantis-sync.service stellantis-sync@.service stellantis-sync-once.service stellantis-sync-once.timer; do
    grep -q "lib/systemd/system/$unit\$" "$work/contents" || fail "$unit is not in $other"
done
echo "test-package: with CARGO_TARGET_DIR=$work/target: $other"

start=$(date +%s)
deb=$(tools/package.sh --debug)
echo "test-package: built $deb ($(( $(date +%s) - start )) s)"
# (No `| grep -q` under pipefail: grep exits at the first match and the writer dies of SIGPIPE.)
[ "$(dpkg-deb --field "$deb" Package)" = stellantis-sync ] || fail "not a stellantis-sync package"
dpkg-deb --contents "$deb" >"$work/contents"

dpkg -i "$deb"

# Files, owners, modes.
expect() { # path owner:group mode
    [ -e "$1" ] || fail "$1 is missing"
    got=$(stat -c '%U:%G %a' "$1")
    [ "$got" = "$2 $3" ] || fail "$1 is $got, expected $2 $3"
}
expect /usr/bin/stellantis-sync root:root 755
expect /etc/stellantis-sync root:stellantis-sync 750
expect /etc/stellantis-sync/config.toml root:stellantis-sync 640
expect /var/lib/stellantis-sync stellantis-sync:stellantis-sync 750
for unit in stellantis-sync.service stellantis-sync@.service stellantis-sync-once.service stellantis-sync-once.timer; do
    expect "/lib/systemd/system/$unit" root:root 644
    grep -q /usr/local "/lib/systemd/system/$unit" && fail "$unit points into /usr/local"
done
grep -qx /etc/stellantis-sync/config.toml /var/lib/dpkg/info/stellantis-sync.conffiles ||
    fail "config.toml is not a conffile"
[[ "$(getent passwd stellantis-sync)" == *:/var/lib/stellantis-sync:/usr/sbin/nologin ]] ||
    fail "user stellantis-sync: $(getent passwd stellantis-sync)"
[ "$(id -gn stellantis-sync)" = stellantis-sync ] || fail "user stellantis-sync is not in its group"
# Nothing enabled or started by the package.
find /etc/systemd/system -name 'stellantis-sync*' | grep . && fail "the package enabled a unit"

# The unit runs with UMask=0027.
as_daemon() { (umask 0027 && setpriv --reuid stellantis-sync --regid stellantis-sync --init-groups -- "$@"); }

# The installed example configuration passes check-config as the daemon user (its placeholder
# credentials are syntactically valid; no network is used).
as_daemon /usr/bin/stellantis-sync --config /etc/stellantis-sync/config.toml check-config
/usr/bin/stellantis-sync --version

# The demo, for a few seconds.
(cd "$work" && timeout 60 /usr/bin/stellantis-sync demo --duration 3 >demo.log 2>&1) ||
    { cat "$work/demo.log"; fail "demo"; }
[ -s "$work/stellantis-sync-demo.sqlite" ] || fail "the demo wrote no database"

# The installed units verify cleanly (any message fails).
for unit in stellantis-sync.service stellantis-sync-once.service stellantis-sync-once.timer stellantis-sync@2.service; do
    out=$(systemd-analyze verify --man=no "/lib/systemd/system/$unit" 2>&1) || fail "verify $unit: $out"
    [ -z "$out" ] || fail "verify $unit: $out"
done

# Real history and tokens in the state directory: the daemon user syncs one account from the
# simulator into /var/lib/stellantis-sync.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
/usr/bin/stellantis-sync simulate --listen "127.0.0.1:$port" >"$work/sim.log" 2>&1 &
sim_pid=$!
for _ in $(seq 50); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null && break
    sleep 0.1
done
cat >"$work/config.toml" <<CONF
state_dir = "/var/lib/stellantis-sync"
[api]
base_url = "http://127.0.0.1:$port/connectedcar/v4"
[idp]
base_url = "http://127.0.0.1:$port"
[app]
client_id = "sim-client-id"
client_secret = "sim-client-secret"
[[accounts]]
name = "user1"
brand = "peugeot"
username = "user1@example.com"
password = "password1"
CONF
chmod 0644 "$work/config.toml"
chmod 0755 "$work"
as_daemon /usr/bin/stellantis-sync --config "$work/config.toml" --once ||
    fail "--once as the stellantis-sync user"
db=/var/lib/stellantis-sync/stellantis-sync.sqlite
token=/var/lib/stellantis-sync/tokens/user1.json
expect "$db" stellantis-sync:stellantis-sync 640
expect /var/lib/stellantis-sync/tokens stellantis-sync:stellantis-sync 700
expect "$token" stellantis-sync:stellantis-sync 600
vehicles=$(sqlite3 "$db" 'SELECT count(*) FROM vehicles')
[ "$vehicles" -ge 1 ] || fail "no vehicles recorded"
sum_before=$(sqlite3 "$db" 'SELECT group_concat(vehicle_id) FROM vehicles ORDER BY vehicle_id' | sha256sum)
token_before=$(sha256sum <"$token")
kill "$sim_pid"; wait "$sim_pid" 2>/dev/null || true; sim_pid=

# remove: the program and units go; configuration, history and tokens stay.
dpkg -r stellantis-sync
[ ! -e /usr/bin/stellantis-sync ] || fail "remove left the binary"
[ ! -e /lib/systemd/system/stellantis-sync.service ] || fail "remove left the unit"
[ -e /etc/stellantis-sync/config.toml ] || fail "remove deleted the configuration (a conffile)"
[ "$(sqlite3 "$db" 'SELECT group_concat(vehicle_id) FROM vehicles ORDER BY vehicle_id' | sha256sum)" = "$sum_before" ] ||
    fail "remove changed the history"
[ "$(sha256sum <"$token")" = "$token_before" ] || fail "remove changed the token store"
# No stat override outlives the package: with one naming the group, deleting the user and group
# after `remove` would make every later dpkg run abort ("unknown system group").
if dpkg-statoverride --list | grep -q stellantis-sync; then
    fail "remove left stat overrides: $(dpkg-statoverride --list | grep stellantis-sync)"
fi
[ "$(stat -c %G:%a /etc/stellantis-sync/config.toml)" = "stellantis-sync:640" ] ||
    fail "remove changed the configuration's group or mode: $(stat -c %G:%a /etc/stellantis-sync/config.toml)"

# purge: the configuration goes; history, tokens and the user stay (documented in README).
dpkg --purge stellantis-sync 2>"$work/purge.log"
cat "$work/purge.log"
[ ! -e /etc/stellantis-sync ] || fail "purge left /etc/stellantis-sync: $(ls -la /etc/stellantis-sync)"
[ -e "$db" ] && [ -e "$token" ] || fail "purge deleted the history or the tokens"
grep -q 'kept /var/lib/stellantis-sync' "$work/purge.log" || fail "purge did not say it kept the state directory"
getent passwd stellantis-sync >/dev/null || fail "purge deleted the user (files in /var/lib would be orphaned)"
dpkg-statoverride --list | grep stellantis-sync && fail "purge left a statoverride"

echo "test-package: PASS ($(( $(date +%s) - start )) s)"

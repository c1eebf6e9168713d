#!/usr/bin/env bash
# Soak test (RELIABILITY.md, T15): the release daemon against the simulator for MINUTES minutes,
# ACCOUNTS accounts, a pass every 10 s, 1 % random faults; samples RSS, open fds, threads and the
# WAL every 30 s into $SOAK_OUT (default ./soak.tsv in the directory it is started from) and checks
# the growth at the end.
#   tools/soak.sh [MINUTES=10] [ACCOUNTS=1000]        (6 h nightly: tools/soak.sh 360)
set -euo pipefail
out=$(realpath -m "${SOAK_OUT:-soak.tsv}")
minutes=${1:-10}
accounts=${2:-1000}
cd "$(dirname "$0")/.."
cargo build --release --locked -q
bin=$PWD/target/release/stellantis-sync
dir=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
"$bin" simulate --listen 127.0.0.1:$port --users "$accounts" --burst 0 --daily-limit 0 --change-every 1 \
    --fault gateway_500=0.01 --fault truncated_json=0.002 --fault slow=0.002 --fault slow_ms=500 \
    > "$dir/sim.log" 2>&1 &
sim=$!
trap 'kill $sim ${daemon:-} 2>/dev/null || true' EXIT
sleep 1
{
  printf 'state_dir = "%s/state"\nschedule = "*/10 * * * * *"\nmax_concurrent_accounts = 16\n' "$dir"
  printf '[rate_limit]\nrequests_per_second = 500\nburst = 1\n[api]\nbase_url = "http://127.0.0.1:%s/connectedcar/v4"\nretry_base = "100ms"\nretry_cap = "1s"\n' $port
  printf '[idp]\nbase_url = "http://127.0.0.1:%s"\nrequests_per_second = 200\n[app]\nclient_id = "sim-client-id"\nclient_secret = "sim-client-secret"\n' $port
  brands=(peugeot citroen ds opel vauxhall)
  for i in $(seq 1 "$accounts"); do
    printf '[[accounts]]\nname = "u%s"\nbrand = "%s"\nusername = "user%s@example.com"\npassword = "password%s"\n' "$i" "${brands[$(((i - 1) % 5))]}" "$i" "$i"
  done
} > "$dir/config.toml"
"$bin" --config "$dir/config.toml" run > "$dir/daemon.log" 2>&1 &
daemon=$!
printf 'seconds\trss_kib\tfds\tthreads\twal_bytes\tok_runs\tfailed_runs\n' > "$out"
end=$((SECONDS + minutes * 60))
while [ $SECONDS -lt $end ]; do
  sleep 30
  rss=$(awk '/VmRSS/ {print $2}' /proc/$daemon/status)
  fds=$(ls /proc/$daemon/fd | wc -l)
  threads=$(awk '/Threads/ {print $2}' /proc/$daemon/status)
  wal=$(stat -c %s "$dir/state/stellantis-sync.sqlite-wal" 2>/dev/null || echo 0)
  ok=$(sqlite3 -readonly "$dir/state/stellantis-sync.sqlite" "select count(*) from sync_runs where status='ok'")
  failed=$(sqlite3 -readonly "$dir/state/stellantis-sync.sqlite" "select count(*) from sync_runs where status='failed'")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' $SECONDS "$rss" "$fds" "$threads" "$wal" "$ok" "$failed" | tee -a "$out"
done
kill -TERM $daemon; wait $daemon || true
grep -c panicked "$dir/daemon.log" && { echo "PANIC in the daemon log"; exit 1; } || true
SOAK_OUT="$out" python3 - <<'PY'
import csv, os
rows = list(csv.DictReader(open(os.environ["SOAK_OUT"]), delimiter="\t"))
tail = rows[max(1, len(rows) // 10):]
rss = [int(r["rss_kib"]) for r in tail]
fds = [int(r["fds"]) for r in tail]
growth = (rss[-1] - rss[0]) / rss[0] * 100
print(f"samples {len(rows)}; RSS {rss[0]/1024:.1f} -> {rss[-1]/1024:.1f} MiB ({growth:+.1f} %), max {max(rss)/1024:.1f} MiB; fds {min(fds)}..{max(fds)}; "
      f"WAL max {max(int(r['wal_bytes']) for r in rows)/1048576:.1f} MiB; runs ok {rows[-1]['ok_runs']}, failed {rows[-1]['failed_runs']}")
ok = growth <= 10 and max(rss) <= 50 * 1024 and max(fds) - min(fds) <= 2
print("PASS" if ok else "FAIL")
raise SystemExit(0 if ok else 1)
PY

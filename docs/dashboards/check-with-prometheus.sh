#!/bin/sh
# Checks docs/dashboards/vigil.json and the scrape setup of docs/OPERATIONS.md against a
# real Prometheus: starts 3 vigil nodes on 127.0.0.1 with --metrics-bind, a Prometheus
# scraping them every second, then evaluates every query of the dashboard (with
# $job/$instance set to match everything, $__rate_interval to 10s) and fails if one does
# not parse, a target is not up, or the cluster's own metrics return no series.
#
# Needs `prometheus` on PATH (Debian: apt-get install prometheus) and python3.
# Usage: docs/dashboards/check-with-prometheus.sh [path/to/vigil]
set -eu
cd "$(dirname "$0")/../.."
VIGIL=${1:-target/release/vigil}
command -v prometheus >/dev/null || { echo "prometheus not found: apt-get install prometheus" >&2; exit 2; }
[ -x "$VIGIL" ] || { echo "$VIGIL not found: cargo build --release -p vigil" >&2; exit 2; }

dir=$(mktemp -d)
pids=""
cleanup() { for p in $pids; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT INT TERM

"$VIGIL" cert init --out "$dir/pki" >/dev/null
for n in 1 2 3; do "$VIGIL" cert issue --ca "$dir/pki" --name "n$n" --out "$dir/pki" >/dev/null; done
for n in 1 2 3; do
    seed=""
    [ "$n" = 1 ] || seed="--seed 127.0.0.1:17941"
    mkdir -p "$dir/n$n"
    # shellcheck disable=SC2086 # $seed is empty or two words on purpose
    "$VIGIL" agent --name "n$n" --zone "az$n" --bind "127.0.0.1:1794$n" --pki "$dir/pki" \
        --socket "$dir/n$n/vigil.sock" --data-dir "$dir/n$n/data" \
        --metrics-bind "127.0.0.1:1946$n" $seed >"$dir/n$n/ready.json" 2>"$dir/n$n/log" &
    pids="$pids $!"
done

cat >"$dir/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: vigil
    static_configs:
      - targets: ["127.0.0.1:19461", "127.0.0.1:19462", "127.0.0.1:19463"]
EOF
prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/tsdb" \
    --web.listen-address=127.0.0.1:19090 >"$dir/prometheus.log" 2>&1 &
pids="$pids $!"

# Scrape for a while so that rates have two samples.
sleep 15
python3 - "$PWD/docs/dashboards/vigil.json" <<'EOF'
import json, sys, urllib.parse, urllib.request

def query(expr):
    url = "http://127.0.0.1:19090/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        return json.load(e)

dash = json.load(open(sys.argv[1]))
exprs = []
def walk(panels):
    for p in panels:
        walk(p.get("panels", []))
        for t in p.get("targets", []):
            if t.get("expr"):
                exprs.append((p.get("title", "?"), t["expr"]))
walk(dash["panels"])

failed = 0
up = query('up{job="vigil"}')["data"]["result"]
if len(up) != 3 or any(r["value"][1] != "1" for r in up):
    print(f"FAIL: not all 3 targets up: {up}"); failed += 1
members = query('vigil_members{state="alive"}')["data"]["result"]
if not members:
    print("FAIL: no vigil_members series scraped"); failed += 1
empty = 0
for title, expr in exprs:
    e = (expr.replace("$job", ".*").replace("$instance", ".*")
             .replace("$__rate_interval", "10s").replace("$__interval", "1s"))
    r = query(e)
    if r.get("status") != "success":
        print(f"FAIL: {title}: {r.get('error')}\n  {e}"); failed += 1
    elif not r["data"]["result"]:
        empty += 1
print(f"{len(exprs)} dashboard queries evaluated: {len(exprs) - failed} parsed, "
      f"{empty} with no series yet (counters that have not moved in a quiet cluster)")
sys.exit(1 if failed else 0)
EOF

#!/usr/bin/env bash
# Measures a real node over HTTP on this machine (docs/PERFORMANCE.md, "HTTP"):
#   1. builds release binaries;
#   2. starts `payu serve` on a fresh data directory under target/ (rate limit off, see below);
#   3. opens and funds ACCOUNTS customers through the API (`payu-bench http-setup`);
#   4. wrk: single transfers (POST /v1/transfers) for each connection count in CONNECTIONS,
#      then the batch endpoint (POST /v1/transfers/batch) for each size in BATCH_SIZES, each
#      for DURATION, with the node's own group-commit figures (from /metrics) for each run;
#   5. stops the node (SIGTERM: drain, flush, snapshot), then runs the bare fdatasync baseline
#      for the mean bytes per group commit each run flushed, on the same file system;
#   6. removes the data directory (KEEP=1 keeps it).
# Everything is written to RESULTS (default target/http-bench-<time>/); wrk's output and one
# JSON line per run are also printed.
#
# The node runs with --rate-limit 0: its default per-client limit (100 k requests or batch
# items per second, burst 200 k) would cap one client's batch load at 100 k transfers/s, which
# measures the limiter, not the node. Single transfers stay well below it either way.
#
# wrk is closed-loop (coordinated omission: a stalled node is sent less, so stalls are
# under-counted in its percentiles); loadtest/ is the open-loop tool.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
ACCOUNTS=${ACCOUNTS:-100000}
DURATION=${DURATION:-30s}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-64}  # one single-transfer run per value, e.g. "16 64 256"
BATCH_SIZES=${BATCH_SIZES:-"1000 8000"}
BATCH_CONNECTIONS=${BATCH_CONNECTIONS:-4}
WAIT_STRATEGY=${WAIT_STRATEGY:-park}
FLUSHES=${FLUSHES:-10000}
RESULTS=${RESULTS:-$ROOT/target/http-bench-$(date +%Y%m%d-%H%M%S)}
# Journal record of one transfer (entry payload 240 bytes + header), as `payu-bench journal`
# reports it; a batch record's size is taken from the journal itself below.
SINGLE_RECORD_BYTES=304

command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install -y wrk)" >&2; exit 1; }
mkdir -p "$RESULTS"
cd "$ROOT"
cargo build --release -p payu-gateway -p payu-bench
PAYU=$ROOT/target/release/payu
BENCH=$ROOT/target/release/payu-bench

DATA=$(mktemp -d "$ROOT/target/payu-http-data-XXXXXX")
NODE_PID=""
stop_node() {
    if [[ -n "$NODE_PID" ]] && kill -0 "$NODE_PID" 2>/dev/null; then
        kill -TERM "$NODE_PID"
        for _ in $(seq 1 600); do
            kill -0 "$NODE_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$NODE_PID" 2>/dev/null; then
            echo "the node did not stop within 60 s of SIGTERM: killing it" >&2
            kill -KILL "$NODE_PID"
        fi
        wait "$NODE_PID" 2>/dev/null || true
    fi
    NODE_PID=""
}
cleanup() {
    stop_node
    if [[ "${KEEP:-0}" != 1 ]]; then rm -rf "$DATA"; else echo "kept $DATA" >&2; fi
}
trap cleanup EXIT

"$PAYU" serve --data-dir "$DATA" --listen 127.0.0.1:0 --rate-limit 0 \
    --wait-strategy "$WAIT_STRATEGY" >"$RESULTS/node.out" 2>"$RESULTS/node.log" &
NODE_PID=$!
URL=""
for _ in $(seq 1 300); do
    URL=$(sed -n 's/^payu listening on \(http:\/\/[0-9.:]*\)$/\1/p' "$RESULTS/node.out")
    [[ -n "$URL" ]] && break
    kill -0 "$NODE_PID" 2>/dev/null || { cat "$RESULTS/node.log" >&2; exit 1; }
    sleep 0.1
done
[[ -n "$URL" ]] || { echo "the node did not start listening within 30 s" >&2; exit 1; }
echo "node at $URL (data in $DATA)" >&2

PAYU_TOKEN=$("$PAYU" token --data-dir "$DATA" --ttl 7200)
export PAYU_TOKEN
"$BENCH" http-setup --url "$URL" --accounts "$ACCOUNTS" --env-file "$RESULTS/accounts.env" \
    | tee "$RESULTS/setup.jsonl"
set -a
# shellcheck disable=SC1091
source "$RESULTS/accounts.env"
set +a

# The node's group-commit counters, cumulative.
metrics() { curl -sf "$URL/metrics"; }
# Prints: flushes, commands, mean commands per flush, and the flush and commit p99 bucket
# bounds (seconds) between two /metrics snapshots.
group_commits() {
    awk -v before="$1" -v after="$2" '
        function load(file, into,   line, n, parts) {
            while ((getline line < file) > 0) {
                if (line ~ /^#/) continue
                n = split(line, parts, " ")
                into[parts[1]] = parts[n]
            }
            close(file)
        }
        function p99(name,   key, le, total, bounds, count, i, k) {
            total = a[name "_count"] - b[name "_count"]
            k = 0
            for (key in a) {
                if (index(key, name "_bucket{le=\"") == 1) {
                    le = substr(key, length(name "_bucket{le=\"") + 1)
                    sub(/"}$/, "", le)
                    k++; bounds[k] = (le == "+Inf") ? 1e9 : le + 0; count[k] = a[key] - b[key]
                }
            }
            # Sort the buckets by bound (few of them: insertion sort).
            for (i = 2; i <= k; i++) {
                for (j = i; j > 1 && bounds[j-1] > bounds[j]; j--) {
                    t = bounds[j]; bounds[j] = bounds[j-1]; bounds[j-1] = t
                    t = count[j]; count[j] = count[j-1]; count[j-1] = t
                }
            }
            for (i = 1; i <= k; i++) if (count[i] >= 0.99 * total) return bounds[i]
            return "none"
        }
        BEGIN {
            load(before, b); load(after, a)
            flushes = a["payu_engine_batch_size_count"] - b["payu_engine_batch_size_count"]
            commands = a["payu_engine_batch_size_sum"] - b["payu_engine_batch_size_sum"]
            transfers = a["payu_transfers_committed_total"] - b["payu_transfers_committed_total"]
            printf "%d %d %d %.1f %s %s\n", flushes, commands, transfers,
                (flushes > 0 ? commands / flushes : 0),
                p99("payu_journal_flush_seconds"), p99("payu_commit_seconds")
        }'
}

run_wrk() { # name, connections, batch size (0 = single)
    local name=$1 connections=$2 batch=$3
    metrics >"$RESULTS/$name.metrics.before"
    echo "== $name: wrk -t$THREADS -c$connections -d$DURATION (batch $batch)" >&2
    PAYU_BATCH=$batch PAYU_RUN_ID="$name-$(date +%s%N)" wrk -t"$THREADS" -c"$connections" \
        -d"$DURATION" --timeout 10s --latency -s "$ROOT/bench/http/transfers.lua" "$URL" \
        | tee "$RESULTS/$name.wrk"
    metrics >"$RESULTS/$name.metrics.after"
    read -r flushes commands transfers mean flush_p99 commit_p99 < <(group_commits \
        "$RESULTS/$name.metrics.before" "$RESULTS/$name.metrics.after")
    echo "$name $flushes $commands $transfers $mean $flush_p99 $commit_p99" >>"$RESULTS/group-commits.txt"
    echo "   node: $flushes group commits, $commands commands ($transfers transfers), \
mean $mean commands per flush, flush p99 <= $flush_p99 s, commit p99 <= $commit_p99 s" >&2
}

for connections in $CONNECTIONS; do
    run_wrk "http_single_c$connections" "$connections" 0
done
for size in $BATCH_SIZES; do
    run_wrk "http_batch_$size" "$BATCH_CONNECTIONS" "$size"
done

# Bytes per group commit: mean commands per flush times the record size. A single transfer's
# record is 304 bytes; a batch of N transfers is one record of about 128 N + 64 bytes (measured
# by `payu-bench pipeline --batch`: 131,392 bytes at 1024, 1,048,640 at 8190).
stop_node
sizes=""
while read -r name flushes commands transfers mean _ _; do
    if [[ "$name" == http_single_* ]]; then
        bytes=$(awk -v m="$mean" -v r="$SINGLE_RECORD_BYTES" 'BEGIN { printf "%d", m * r }')
    else
        size=${name#http_batch_}
        bytes=$(awk -v m="$mean" -v s="$size" 'BEGIN { printf "%d", m * (s * 128 + 64) }')
    fi
    (( bytes > 0 )) && sizes="$sizes${sizes:+,}$bytes"
    echo "$name: mean $mean commands per group commit = about $bytes bytes per flush" >&2
done <"$RESULTS/group-commits.txt"
"$BENCH" fdatasync --bytes "$sizes" --flushes "$FLUSHES" | tee "$RESULTS/fdatasync.jsonl"
echo "results in $RESULTS" >&2

#!/usr/bin/env bash
# The big versions of the fault tests (tests/faults.rs, issue 7 "Faults").
#
# Same tests as CI runs, scaled up by environment variables and built in
# release mode, one test at a time, figures printed:
#
#   benches/faults.sh                      # everything, big scale
#   benches/faults.sh crash_durability     # only tests whose name matches
#   COURIER_FAULT_SEEDS=50 benches/faults.sh crash_durability::postgres
#
# It runs
#
#   cargo test --release --test faults -- --test-threads=1 --nocapture [FILTER]
#
# with these defaults (any of them may be set beforehand to override):
#
#   COURIER_FAULT_CLIENTS=500      sending WebSocket clients (a channel per 10)
#   COURIER_FAULT_SEEDS=20         SIGKILL and SIGTERM runs per backend
#   COURIER_FAULT_SEED=<clock>     first seed; each run prints its own, and
#                                  COURIER_FAULT_SEED=<s> COURIER_FAULT_SEEDS=1
#                                  replays one
#   COURIER_FAULT_KILL_MIN_MS=500  the signal lands this long after traffic
#   COURIER_FAULT_KILL_MAX_MS=5000   flows, at most this long
#   COURIER_FAULT_STORM_MS=5000    pg_terminate_backend every 50 ms this long
#   COURIER_FAULT_OUTAGE_MS=10000  then the test database refuses connections
#   COURIER_FAULT_PERSIST_QUEUE=4096  the broker's write queue in the outage
#   COURIER_FAULT_FLOOD_MB=400     the slow-consumer flood
#   COURIER_FAULT_REPORT=target/faults-report.jsonl
#                                  one JSON line of figures per run (acked,
#                                  lost, duplicated, RSS, latencies), appended
#   COURIER_FAULT_KEEP_DIRS        set it to keep data dirs and broker logs
#
# PostgreSQL comes from DATABASE_URL (default
# postgres://postgres@127.0.0.1:5432/postgres); each run gets a database of
# its own, and the outage test disturbs only that one. Without PostgreSQL
# the PostgreSQL runs print why and skip, unless CI=true.
#
# At the defaults a full run takes 20 to 40 minutes on a 2-core machine
# (plus the release build the first time); it is run under `nice`.
set -euo pipefail
cd "$(dirname "$0")/.."

export COURIER_FAULT_CLIENTS="${COURIER_FAULT_CLIENTS:-500}"
export COURIER_FAULT_SEEDS="${COURIER_FAULT_SEEDS:-20}"
export COURIER_FAULT_KILL_MIN_MS="${COURIER_FAULT_KILL_MIN_MS:-500}"
export COURIER_FAULT_KILL_MAX_MS="${COURIER_FAULT_KILL_MAX_MS:-5000}"
export COURIER_FAULT_STORM_MS="${COURIER_FAULT_STORM_MS:-5000}"
export COURIER_FAULT_OUTAGE_MS="${COURIER_FAULT_OUTAGE_MS:-10000}"
export COURIER_FAULT_PERSIST_QUEUE="${COURIER_FAULT_PERSIST_QUEUE:-4096}"
export COURIER_FAULT_FLOOD_MB="${COURIER_FAULT_FLOOD_MB:-400}"
export COURIER_FAULT_REPORT="${COURIER_FAULT_REPORT:-$PWD/target/faults-report.jsonl}"

# 500 clients hold 500 sockets on each side, more while resending.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

mkdir -p "$(dirname "$COURIER_FAULT_REPORT")"
echo "faults: clients=$COURIER_FAULT_CLIENTS seeds=$COURIER_FAULT_SEEDS" \
     "kill=${COURIER_FAULT_KILL_MIN_MS}..${COURIER_FAULT_KILL_MAX_MS}ms" \
     "storm=${COURIER_FAULT_STORM_MS}ms outage=${COURIER_FAULT_OUTAGE_MS}ms" \
     "flood=${COURIER_FAULT_FLOOD_MB}MB report=$COURIER_FAULT_REPORT" >&2

started=$(date +%s)
status=0
nice -n 10 cargo test --release --test faults -- --test-threads=1 --nocapture "$@" || status=$?
echo "faults: finished in $(( $(date +%s) - started )) s, exit $status;" \
     "figures in $COURIER_FAULT_REPORT" >&2
exit "$status"

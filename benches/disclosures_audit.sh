#!/bin/bash
# Issue 36 audit-rate benchmark: rooms load, message.delivered flushed every
# second, entries by action in the same run. Run from the repository root: benches/disclosures_audit.sh target/release/deps/load-<hash> (cargo bench --bench load --no-run builds it).
set -u

BIN=${BIN:-target/release/courier}
LOAD=$1            # the built load bench binary
CONNS=${CONNS:-2000}
DUR=${DUR:-20}
PORT=18736
DB=courier_i36_rooms
PG=${PG:-postgres://postgres@127.0.0.1:5432}
OUT=${OUT:-target/disclosures-audit}; rm -rf $OUT; mkdir -p $OUT/data
psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
limit=100000000
env COURIER_BIND=127.0.0.1:$PORT COURIER_DATA_DIR=$OUT/data \
  COURIER_SEND_PER_MINUTE=$limit COURIER_REST_PER_15MIN=$limit COURIER_AUTH_PER_15MIN=$limit \
  COURIER_REGISTER_PER_HOUR=$limit COURIER_MAX_UNAUTHENTICATED_PER_IP=$limit COURIER_MAX_CONNECTIONS_PER_IP=$limit \
  COURIER_ALLOW_REGISTRATION=true COURIER_INITIAL_ADMIN_USERNAME=benchadmin \
  COURIER_INITIAL_ADMIN_PASSWORD=bench-admin-password-0123456789 \
  COURIER_ARGON2_MEMORY_KIB=1024 COURIER_ARGON2_ITERATIONS=1 COURIER_LOCKOUT_THRESHOLD=0 \
  COURIER_AUDIT_DELIVERY_FLUSH_SECS=1 COURIER_DATABASE_URL=$PG/$DB RUST_LOG=warn \
  taskset -c 0 $BIN serve > $OUT/server.log 2>&1 &
SPID=$!
echo $SPID > $OUT/server.pid
for i in $(seq 1 100); do curl -sf http://127.0.0.1:$PORT/ready >/dev/null && break; sleep 0.2; done
# Sampler: each second, the server's CPU ticks and the audit metrics.
( while kill -0 $SPID 2>/dev/null; do
    t=$(date +%s.%N); cpu=$(awk '{print $14+$15}' /proc/$SPID/stat 2>/dev/null)
    m=$(curl -s http://127.0.0.1:$PORT/metrics | grep -E '^courier_audit_entries_total|^courier_audit_batch_size_count|^courier_messages_delivered_total|^courier_messages_published_total' | tr '\n' ' ')
    echo "$t $cpu $m" >> $OUT/samples.txt; sleep 1; done ) &
SAMPLER=$!
# perf: 8 s of the server once the load is steady (publishing ≥ half the rate).
( prev=0; while kill -0 $SPID 2>/dev/null; do
    n=$(curl -s http://127.0.0.1:$PORT/metrics | awk '/^courier_messages_published_total/ {print int($2)}'); n=${n:-0}
    if [ $prev -gt 0 ] && [ $((n - prev)) -gt $((CONNS / 2)) ]; then
      sleep 4; date +%s.%N > $OUT/perf.start
      perf record -F 499 -g -p $SPID -o $OUT/perf.data -- sleep 8 > $OUT/perf.log 2>&1
      date +%s.%N > $OUT/perf.end; break
    fi
    prev=$n; sleep 1; done ) &
taskset -c 1 $LOAD rooms --conns $CONNS --duration $DUR --drain 5 --url http://127.0.0.1:$PORT > $OUT/load.txt 2>&1
echo "load exit $?" >> $OUT/load.txt
sleep 3   # the last flushes (connections left)
kill $SAMPLER 2>/dev/null
kill $SPID; wait $SPID 2>/dev/null
psql "$PG/$DB" -At -c "SELECT action, count(*), min(timestamp), max(timestamp) FROM audit_logs GROUP BY action ORDER BY 2 DESC" > $OUT/by_action.txt
echo done

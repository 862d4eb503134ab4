#!/usr/bin/env bash
# What PostgreSQL alone takes of Courier's message writes on this machine:
# the floor under the `persist` scenario (benches/README.md, "What the
# persist target asks of PostgreSQL").
#
#   benches/pg_floor.sh postgres://courier@127.0.0.1:55433/floor [RATE ...]
#
# The database must exist and be empty. The script migrates it with
# target/release/courier (`cargo build --release` first), adds 20 channels,
# then has pgbench (8 clients, open-loop at a fixed rate, 10 s a step)
# insert what one acked message costs the database, ROWS messages per
# transaction (default 100; at 20,000 to 30,000 msgs/s the broker's
# batches hold about 130 to 500), fsync on as the server runs it:
#
#   with-audit     a `messages` row and its `message.send` row in
#                  `audit_logs`, as the broker writes them (the audit chain
#                  covers every message)
#   messages-only  the `messages` row alone
#
# at each RATE in messages per second (default: 10000 20000 30000 40000
# 60000 80000), and prints one line per step: achieved rate, and p50, p99
# and maximum transaction latency, from pgbench's per-transaction log.
#
# The rows match the broker's (116-byte ciphertext, 12-byte nonce, ids in
# time order, audit details of the same length) but PostgreSQL does less
# than for the broker: no arrays to parse, no channel lock, no round trips
# from another process. What it cannot take here, the broker cannot either.
set -euo pipefail

url=${1:?usage: benches/pg_floor.sh postgres://user@host:port/db [RATE ...]}
shift
rates=("$@")
rows=${ROWS:-100}
if [ ${#rates[@]} -eq 0 ]; then
    rates=(10000 20000 30000 40000 60000 80000)
fi
root=$(cd "$(dirname "$0")/.." && pwd)
courier=$root/target/release/courier
pgbench=$(command -v pgbench || ls /usr/lib/postgresql/*/bin/pgbench | tail -1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

RUST_LOG=warn "$courier" --database-url "$url" migrate >/dev/null
psql -q -v ON_ERROR_STOP=1 "$url" <<'SQL'
INSERT INTO channels (id, name, kind, created_by, created_at)
SELECT lpad(to_hex(g), 32, '0')::uuid, 'floor-' || g, 'public',
       lpad(to_hex(g), 32, '0')::uuid, 0
FROM generate_series(1, 20) g;
CREATE SEQUENCE floor_message_seq START 1000000000;
CREATE SEQUENCE floor_audit_seq START 1000000000;
SQL

# ROWS messages: ids and seqs in time order, 20 channels and senders.
cat > "$work/messages.sql" <<'SQL'
INSERT INTO messages (id, channel_id, seq, sender_id, client_msg_id, ciphertext, nonce,
                      key_version, contains_phi, created_at)
SELECT lpad(to_hex(n), 32, '0')::uuid, lpad(to_hex(1 + n % 20), 32, '0')::uuid, n,
       lpad(to_hex(1 + n % 20), 32, '0')::uuid, NULL, decode(repeat('ab', 116), 'hex'),
       decode(repeat('cd', 12), 'hex'), 1, false, 1764900000000 + n
FROM (SELECT nextval('floor_message_seq') AS n FROM generate_series(1, :rows)) s;
SQL
cat > "$work/audit.sql" <<'SQL'
INSERT INTO audit_logs (seq, timestamp, actor_id, ip, user_agent, action, details,
                        prev_hash, hash)
SELECT n, 1764900000000, lpad(to_hex(1 + n % 20), 32, '0')::uuid, '127.0.0.1', NULL,
       'message.send',
       '{"channelId":"00000000-0000-0000-0000-000000000001","containsPHI":false,'
           || '"messageId":"' || lpad(to_hex(n), 32, '0')
           || '","phiDetected":[],"seq":' || n || '}',
       repeat('a', 64), repeat('b', 64)
FROM (SELECT nextval('floor_audit_seq') AS n FROM generate_series(1, :rows)) s;
SQL
{ echo 'BEGIN;'; cat "$work/messages.sql" "$work/audit.sql"; echo 'COMMIT;'; } > "$work/with-audit.sql"
{ echo 'BEGIN;'; cat "$work/messages.sql"; echo 'COMMIT;'; } > "$work/messages-only.sql"

for shape in with-audit messages-only; do
    for rate in "${rates[@]}"; do
        rm -f "$work"/log.*
        "$pgbench" -n -c 8 -j 2 -T 10 -R $((rate / rows)) -D rows="$rows" -f "$work/$shape.sql" \
            --log --log-prefix="$work/log" "$url" >/dev/null
        # Each log line: client, transaction, latency in µs, ...
        cat "$work"/log.* | awk '{ print $3 }' | sort -n | awk -v shape="$shape" -v rate="$rate" -v rows="$rows" '
            { lat[NR] = $1 }
            END {
                printf "%-13s offered %6d msgs/s  took %6d msgs/s  p50 %8.1f ms  p99 %8.1f ms  max %8.1f ms\n",
                    shape, rate, NR * rows / 10, lat[int(NR * 0.5)] / 1000,
                    lat[int(NR * 0.99)] / 1000, lat[NR] / 1000
            }'
    done
done

#!/usr/bin/env bash
# Attachment throughput (issue 35): upload and download MB/s of 1 MB and
# 50 MB files through Courier (sniffed, scanned by clamd, sealed with
# AES-256-GCM, stored), against `cp` of the same file and a raw S3 PUT/GET
# to the same S3 server, all in one run; and Courier's RSS during the 50 MB
# transfers (the file must never be held whole).
#
#   cargo build --release      # target/release/courier
#   bash benches/files.sh      # prints one markdown table (stdout); progress on stderr
#
# Needs: clamd (/usr/sbin/clamd, Debian's clamav-daemon, or on PATH), s3s-fs
# 0.14.1 (COURIER_S3S_FS, else $CARGO_HOME/courier-tools/s3s-fs-0.14.1, as
# tests/support/s3.rs installs it), curl >= 7.75 (--aws-sigv4), jq.
#
# What it does, all in one temporary directory (one disk: the copies, the
# S3 server's bucket and Courier's data directories):
#   1. Makes files of random bytes (nothing compresses) behind a PDF
#      header, so the sniffer types them application/pdf: 1,000,000 and
#      50,000,000 bytes (the default files_max_bytes is 50 MiB), and
#      200,000,000 for the RSS check of step 5.
#   2. Starts clamd (a config and signature of our own, as
#      tests/support/clamd.rs does: TCP on 127.0.0.1, StreamMaxLength 64M)
#      and s3s-fs, each on a free port.
#   3. Baselines: `cp` to a new file (page cache only), `cp` then `sync` of
#      that file (on disk), a raw SigV4 PUT and GET with curl to s3s-fs,
#      and the file streamed to clamd alone (INSTREAM, 1 MiB pieces, from
#      bash over /dev/tcp: what the scan costs without Courier).
#   4. Courier (release) three times, each with a fresh data directory:
#      local store + clamd, S3 store + clamd, local store without clamd
#      (development: stored unscanned; uploads only, the downloads do not
#      involve clamd, but for 200 MB). Per store and size: N uploads
#      (POST /api/channels/{id}/attachments, raw body) and N downloads
#      (GET /api/files/{id}/content to /dev/null; one more, untimed, to a
#      file whose sha256 must match). curl's %{time_total}; MB/s = bytes /
#      median seconds / 10^6.
#   5. RSS: VmRSS of Courier sampled every 50 ms during the 50 MB uploads
#      and downloads; reported as the peak minus the idle RSS just before
#      them, and VmHWM (the process's peak so far) after the uploads. The
#      run without clamd also takes 200 MB files (files_max_bytes raised to
#      200,000,000; clamd's StreamMaxLength is 64M): flat memory means the
#      same growth for 200 MB as for 50 MB.
#
# N1 (default 20), N50 (default 10) and N200 (default 3) set the number of
# runs per size.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
courier=${COURIER_BIN:-$root/target/release/courier}
n1=${N1:-20}
n50=${N50:-10}
n200=${N200:-3}
size1=1000000
size50=50000000
size200=200000000
admin=benchadmin
admin_password=bench-admin-password-0123456789
bucket=courier-bench
s3_key=courier-bench-access-key
s3_secret=courier-bench-secret-key

say() { printf '%s\n' "$*" >&2; }
die() { say "files.sh: $*"; exit 1; }

[ -x "$courier" ] || die "no $courier: cargo build --release first"
command -v jq >/dev/null || die "jq is needed"
command -v curl >/dev/null || die "curl is needed"
clamd_bin=/usr/sbin/clamd
[ -x "$clamd_bin" ] || clamd_bin=$(command -v clamd) || die "clamd is not installed (apt-get install clamav-daemon)"
s3s_fs=${COURIER_S3S_FS:-${CARGO_HOME:-$HOME/.cargo}/courier-tools/s3s-fs-0.14.1/bin/s3s-fs}
[ -x "$s3s_fs" ] || die "no s3s-fs at $s3s_fs: cargo install s3s-fs --version =0.14.1 --features binary --locked --root ${CARGO_HOME:-$HOME/.cargo}/courier-tools/s3s-fs-0.14.1"

work=$(mktemp -d "${TMPDIR:-/tmp}/courier-files-bench.XXXXXX")
clamd_pid= s3_pid= courier_pid= sampler_pid=

cleanup() {
    local status=$?
    set +e
    [ -n "$sampler_pid" ] && kill "$sampler_pid" 2>/dev/null
    [ -n "$courier_pid" ] && kill -TERM "$courier_pid" 2>/dev/null
    [ -n "$clamd_pid" ] && kill -TERM "$clamd_pid" 2>/dev/null
    # s3s-fs shuts down on SIGINT and has no SIGTERM handler.
    [ -n "$s3_pid" ] && kill -INT "$s3_pid" 2>/dev/null
    wait 2>/dev/null
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A port nothing listens on (the child may still lose it to a race; every
# start checks that its own child answers).
free_port() {
    local port
    while :; do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
}

# wait_until SECONDS PID CMD...: polls CMD every 50 ms until it succeeds;
# fails when PID exits or the time is up.
wait_until() {
    local deadline=$((SECONDS + $1)) pid=$2
    shift 2
    until "$@" 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || return 1
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.05
    done
}

elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f\n", b - a }'; }

# ---- test files ---------------------------------------------------------------

make_pdf() { # PATH BYTES
    { printf '%%PDF-1.7\n'; head -c $(($2 - 9)) /dev/urandom; } > "$1"
    [ "$(stat -c %s "$1")" -eq "$2" ] || die "could not make $1"
}
make_pdf "$work/1mb.pdf" "$size1"
make_pdf "$work/50mb.pdf" "$size50"
make_pdf "$work/200mb.pdf" "$size200"
sum1=$(sha256sum "$work/1mb.pdf" | cut -d' ' -f1)
sum50=$(sha256sum "$work/50mb.pdf" | cut -d' ' -f1)
sum200=$(sha256sum "$work/200mb.pdf" | cut -d' ' -f1)

# ---- clamd -----------------------------------------------------------------------

mkdir "$work/clamd"
clamd_port=$(free_port)
eicar='X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*'
printf 'Courier-Test-EICAR:0:*:%s\n' "$(printf '%s' "$eicar" | od -An -v -tx1 | tr -d ' \n')" \
    > "$work/clamd/courier-test.ndb"
cat > "$work/clamd/clamd.conf" <<EOF
# Written by benches/files.sh (as tests/support/clamd.rs).
Foreground yes
TCPSocket $clamd_port
TCPAddr 127.0.0.1
DatabaseDirectory $work/clamd
TemporaryDirectory $work/clamd
LogFile $work/clamd/clamd.log
LogTime yes
StreamMaxLength 64M
MaxFileSize 64M
MaxScanSize 256M
AlertExceedsMax yes
SelfCheck 0
EOF
clamd_pong() ( # a subshell: a refused connection must not end the script
    exec 4<>"/dev/tcp/127.0.0.1/$clamd_port"
    printf 'zPING\0' >&4
    IFS= read -r -d '' -t 1 answer <&4 || true
    [ "$answer" = PONG ]
)
"$clamd_bin" -c "$work/clamd/clamd.conf" </dev/null >"$work/clamd/clamd.out" 2>&1 &
clamd_pid=$!
wait_until 60 "$clamd_pid" clamd_pong || { cat "$work/clamd/clamd.out" >&2; die "clamd did not start"; }
say "clamd $("$clamd_bin" --version) on 127.0.0.1:$clamd_port"

# ---- s3s-fs -----------------------------------------------------------------------

mkdir -p "$work/s3/$bucket"
s3_port=$(free_port)
s3_url=http://127.0.0.1:$s3_port
RUST_LOG=s3s_fs=warn,s3s=warn "$s3s_fs" --host 127.0.0.1 --port "$s3_port" \
    --access-key "$s3_key" --secret-key "$s3_secret" "$work/s3" \
    </dev/null >"$work/s3s-fs.log" 2>&1 &
s3_pid=$!
wait_until 30 "$s3_pid" curl -s -o /dev/null "$s3_url/" || { cat "$work/s3s-fs.log" >&2; die "s3s-fs did not start"; }
say "s3s-fs $("$s3s_fs" --version) on $s3_url"

# ---- measuring ---------------------------------------------------------------------

# One line per measured row: label|op|bytes|seconds seconds ...
results=$work/results

# median and range of the seconds given, then MB/s of BYTES at the median.
summary() { # BYTES SECONDS...
    local bytes=$1
    shift
    printf '%s\n' "$@" | sort -g | awk -v bytes="$bytes" '
        { t[NR] = $1 }
        END {
            m = (NR % 2) ? t[(NR + 1) / 2] : (t[NR / 2] + t[NR / 2 + 1]) / 2
            printf "%d|%.4f|%.4f–%.4f|%.1f\n", NR, m, t[1], t[NR], bytes / m / 1e6
        }'
}
record() { # LABEL OP BYTES SECONDS...
    local label=$1 op=$2 bytes=$3
    shift 3
    printf '%s|%s|%s|%s\n' "$label" "$op" "$bytes" "$*" >> "$results"
    say "  $label $op $((bytes / 1000000)) MB: $(summary "$bytes" "$@" | awk -F'|' '{ print $2 " s median, " $4 " MB/s" }')"
}

# curl's time, failing unless the status is WANT; the body goes to OUT.
timed_curl() { # WANT OUT CURL-ARGS...
    local want=$1 out=$2 code t line
    shift 2
    line=$(curl -sS -o "$out" -w '%{http_code} %{time_total}\n' "$@") || true
    read -r code t <<<"$line"
    [ "$code" = "$want" ] || { say "HTTP $code (wanted $want) for curl $*"; [ -f "$out" ] && head -c 500 "$out" >&2; die "request failed"; }
    echo "$t"
}

# VmRSS of PID (kB) every 50 ms into FILE until killed.
start_sampler() { # PID FILE
    local pid=$1 file=$2
    (
        while :; do
            while read -r key value _; do
                [ "$key" = VmRSS: ] && { echo "$value"; break; }
            done < "/proc/$pid/status"
            sleep 0.05
        done
    ) > "$file" 2>/dev/null &
    sampler_pid=$!
}
stop_sampler() {
    kill "$sampler_pid" 2>/dev/null || true
    wait "$sampler_pid" 2>/dev/null || true
    sampler_pid=
}
status_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; } # PID FIELD
max_kb() { sort -n "$1" | tail -1 | grep . || echo 0; }

# ---- baselines ---------------------------------------------------------------------

baselines() { # NAME BYTES SUM RUNS
    local name=$1 bytes=$2 sum=$3 runs=$4 src=$work/$1.pdf i a b
    local cp=() cps=() put=() get=() scan=()
    for ((i = 0; i < runs; i++)); do
        a=$EPOCHREALTIME; cp "$src" "$work/copy"; b=$EPOCHREALTIME
        cp+=("$(elapsed "$a" "$b")"); rm -f "$work/copy"
        a=$EPOCHREALTIME; cp "$src" "$work/copy"; sync "$work/copy"; b=$EPOCHREALTIME
        cps+=("$(elapsed "$a" "$b")"); rm -f "$work/copy"
    done
    record "cp (page cache)" copy "$bytes" "${cp[@]}"
    record "cp + sync" copy "$bytes" "${cps[@]}"
    # The payload's SHA-256 is signed (as object_store signs its parts);
    # the server checks it. These keep curl's `Expect: 100-continue`: with
    # `-H 'Expect:'` curl 7.88 signs the header it then leaves out (403).
    local sign=(--aws-sigv4 "aws:amz:us-east-1:s3" --user "$s3_key:$s3_secret")
    for ((i = 0; i < runs; i++)); do
        put+=("$(timed_curl 200 /dev/null "${sign[@]}" -H "x-amz-content-sha256: $sum" \
            -T "$src" "$s3_url/$bucket/raw-$name-$i")")
    done
    timed_curl 200 "$work/got" "${sign[@]}" -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" \
        "$s3_url/$bucket/raw-$name-0" >/dev/null
    [ "$(sha256sum "$work/got" | cut -d' ' -f1)" = "$sum" ] || die "raw S3 GET: wrong content"
    rm -f "$work/got"
    for ((i = 0; i < runs; i++)); do
        get+=("$(timed_curl 200 /dev/null "${sign[@]}" -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" \
            "$s3_url/$bucket/raw-$name-$i")")
    done
    record "raw S3 (curl, s3s-fs)" upload "$bytes" "${put[@]}"
    record "raw S3 (curl, s3s-fs)" download "$bytes" "${get[@]}"
    for ((i = 0; i < runs; i++)); do
        scan+=("$(clamd_instream "$src")")
    done
    record "clamd alone (INSTREAM)" scan "$bytes" "${scan[@]}"
}

# Streams FILE to clamd (zINSTREAM, 1 MiB pieces), checks the verdict is
# clean, prints the seconds. The stream is framed into a file first
# (untimed), then sent with one `cat`: a 4-byte length written on its own
# stalls on Nagle and delayed ACKs (1.0 s instead of 0.4 s for 50 MB).
clamd_instream() {
    local file=$1 size piece=1048576 offset=0 len a b answer frames=$work/instream
    size=$(stat -c %s "$file")
    {
        printf 'zINSTREAM\0'
        while [ "$offset" -lt "$size" ]; do
            len=$((size - offset < piece ? size - offset : piece))
            printf "\\x$(printf %02x $((len >> 24 & 255)))\\x$(printf %02x $((len >> 16 & 255)))\\x$(printf %02x $((len >> 8 & 255)))\\x$(printf %02x $((len & 255)))"
            dd if="$file" bs="$piece" skip=$((offset / piece)) count=1 status=none
            offset=$((offset + len))
        done
        printf '\0\0\0\0'
    } > "$frames"
    a=$EPOCHREALTIME
    exec 5<>"/dev/tcp/127.0.0.1/$clamd_port"
    cat "$frames" >&5
    IFS= read -r -d '' -t 120 answer <&5 || true
    exec 5<&-
    b=$EPOCHREALTIME
    rm -f "$frames"
    [ "$answer" = "stream: OK" ] || die "clamd alone answered '$answer'"
    elapsed "$a" "$b"
}

# ---- Courier ---------------------------------------------------------------------------

start_courier() { # NAME ENV...
    local name=$1
    shift
    local data=$work/courier-$name
    courier_port=$(free_port)
    courier_url=http://127.0.0.1:$courier_port
    env "$@" \
        COURIER_DATA_DIR="$data" \
        COURIER_BIND="127.0.0.1:$courier_port" \
        COURIER_REST_PER_15MIN=100000000 \
        COURIER_AUTH_PER_15MIN=100000000 \
        COURIER_INITIAL_ADMIN_USERNAME="$admin" \
        COURIER_INITIAL_ADMIN_PASSWORD="$admin_password" \
        COURIER_ARGON2_MEMORY_KIB=1024 \
        COURIER_ARGON2_ITERATIONS=1 \
        RUST_LOG="${RUST_LOG:-warn}" \
        "$courier" serve </dev/null >"$work/courier-$name.log" 2>&1 &
    courier_pid=$!
    wait_until 60 "$courier_pid" curl -sf -o /dev/null "$courier_url/ready" ||
        { tail -30 "$work/courier-$name.log" >&2; die "courier ($name) did not start"; }
    token=$(curl -sSf -H 'Content-Type: application/json' \
        -d "{\"username\":\"$admin\",\"password\":\"$admin_password\"}" \
        "$courier_url/api/auth/login" | jq -er .token)
    channel=$(curl -sSf -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        -d "{\"name\":\"bench-$name\",\"kind\":\"private\"}" \
        "$courier_url/api/channels" | jq -er .channel.id)
    say "courier ($name) on $courier_url, pid $courier_pid"
}

stop_courier() {
    kill -TERM "$courier_pid"
    wait "$courier_pid" || true
    courier_pid=
}

# Uploads FILE once; prints "SECONDS FILE-ID".
upload_once() { # FILE SIZE
    local t
    t=$(timed_curl 201 "$work/answer.json" -X POST -H "Authorization: Bearer $token" \
        -H 'Content-Type: application/octet-stream' -H 'Expect:' -T "$1" \
        "$courier_url/api/channels/$channel/attachments?name=bench.pdf")
    jq -e --argjson size "$2" '.type == "application/pdf" and .size == $size and .state == "ready"' \
        "$work/answer.json" >/dev/null || { cat "$work/answer.json" >&2; die "unexpected upload answer"; }
    echo "$t $(jq -r .id "$work/answer.json")"
}

# N uploads then N downloads of one size; with RSS=1, samples the RSS.
courier_size() { # LABEL NAME BYTES SUM RUNS DOWNLOADS RSS
    local label=$1 name=$2 bytes=$3 sum=$4 runs=$5 downloads=$6 rss=$7 src=$work/$2.pdf
    local up=() down=() ids=() i t id idle line
    [ "$rss" = 1 ] && { idle=$(status_kb "$courier_pid" VmRSS); start_sampler "$courier_pid" "$work/rss-up"; }
    for ((i = 0; i < runs; i++)); do
        line=$(upload_once "$src" "$bytes")
        read -r t id <<<"$line"
        up+=("$t"); ids+=("$id")
    done
    [ "$rss" = 1 ] && {
        stop_sampler
        rss_rows+=("$label, $((bytes / 1000000)) MB upload|$idle|$(max_kb "$work/rss-up")|$(status_kb "$courier_pid" VmHWM)")
    }
    record "$label" upload "$bytes" "${up[@]}"
    [ "$downloads" = 1 ] || return 0
    timed_curl 200 "$work/got" -H "Authorization: Bearer $token" \
        "$courier_url/api/files/${ids[0]}/content" >/dev/null
    [ "$(sha256sum "$work/got" | cut -d' ' -f1)" = "$sum" ] || die "$label: downloaded content differs"
    rm -f "$work/got"
    [ "$rss" = 1 ] && { idle=$(status_kb "$courier_pid" VmRSS); start_sampler "$courier_pid" "$work/rss-down"; }
    for ((i = 0; i < runs; i++)); do
        down+=("$(timed_curl 200 /dev/null -H "Authorization: Bearer $token" \
            "$courier_url/api/files/${ids[i]}/content")")
    done
    [ "$rss" = 1 ] && {
        stop_sampler
        rss_down_rows+=("$label, $((bytes / 1000000)) MB download|$idle|$(max_kb "$work/rss-down")")
    }
    record "$label" download "$bytes" "${down[@]}"
}

courier_phase() { # LABEL NAME DOWNLOADS ENV...
    local label=$1 name=$2 downloads=$3
    shift 3
    start_courier "$name" "$@"
    courier_size "$label" 1mb "$size1" "$sum1" "$n1" "$downloads" 0
    courier_size "$label" 50mb "$size50" "$sum50" "$n50" "$downloads" 1
    stop_courier
}

rss_rows=()
rss_down_rows=()
started=$(date -u '+%Y-%m-%d %H:%M UTC')
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

say "baselines"
baselines 1mb "$size1" "$sum1" "$n1"
baselines 50mb "$size50" "$sum50" "$n50"

say "courier, local store, clamd"
courier_phase "Courier, local store, scanned" local 1 \
    COURIER_FILES_CLAMD_URL="tcp://127.0.0.1:$clamd_port"
say "courier, S3 store, clamd"
courier_phase "Courier, S3 store, scanned" s3 1 \
    COURIER_FILES_CLAMD_URL="tcp://127.0.0.1:$clamd_port" \
    COURIER_FILES_STORE="s3://$bucket/courier" \
    AWS_ENDPOINT="$s3_url" AWS_ACCESS_KEY_ID="$s3_key" AWS_SECRET_ACCESS_KEY="$s3_secret" \
    AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true AWS_VIRTUAL_HOSTED_STYLE_REQUEST=false
say "courier, local store, no clamd"
# Without clamd (its StreamMaxLength is 64M) a 200 MB file can go through
# too, with files_max_bytes raised: does the RSS grow with the file?
start_courier noscan -u COURIER_FILES_CLAMD_URL COURIER_FILES_MAX_BYTES="$size200"
label="Courier, local store, not scanned"
courier_size "$label" 1mb "$size1" "$sum1" "$n1" 0 0
courier_size "$label" 50mb "$size50" "$sum50" "$n50" 0 1
courier_size "$label" 200mb "$size200" "$sum200" "$n200" 1 1
stop_courier

# ---- the table ----------------------------------------------------------------------------

echo "Run: $started; $(nproc) cores, $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), $(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM; N1=$n1, N50=$n50, N200=$n200; load average $load_before at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end."
echo
echo "| what | op | size | runs | median s | min–max s | MB/s (median) |"
echo "|---|---|---|---|---|---|---|"
while IFS='|' read -r label op bytes times; do
    # shellcheck disable=SC2086 # the seconds are space-separated on purpose
    IFS='|' read -r runs median range mbs < <(summary "$bytes" $times)
    echo "| $label | $op | $((bytes / 1000000)) MB | $runs | $median | $range | $mbs |"
done < "$results"
echo
echo "| Courier RSS | idle before (MiB) | peak during (MiB) | peak − idle (MiB) | VmHWM after the uploads (MiB) |"
echo "|---|---|---|---|---|"
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
for row in "${rss_rows[@]}"; do
    IFS='|' read -r label idle peak hwm <<<"$row"
    echo "| $label | $(mib "$idle") | $(mib "$peak") | $(mib $((peak - idle))) | $(mib "$hwm") |"
done
for row in "${rss_down_rows[@]}"; do
    IFS='|' read -r label idle peak <<<"$row"
    echo "| $label | $(mib "$idle") | $(mib "$peak") | $(mib $((peak - idle))) | |"
done

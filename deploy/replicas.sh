#!/usr/bin/env bash
# Several framesrv replicas behind HAProxy on this machine, a zipf load over many videos through
# HAProxy, and what each replica saw.
#
#   deploy/replicas.sh                      3 replicas, consistent hashing (deploy/haproxy/haproxy.cfg)
#   deploy/replicas.sh --balance roundrobin the same replicas, round-robin (to compare)
#   deploy/replicas.sh --balance single     one replica with N times the cache, same load
#   deploy/replicas.sh --compare            all three, one after the other, and a summary table
#
# Options: --replicas N (3), --cache SIZE per replica (48MiB), --videos N (30), --duration S (20),
# --requests N (a fixed number of requests instead of a duration: what --compare should use),
# --concurrency N (16), --media DIR (default: N generated 10 s 480x270 clips), --keep (leave the
# replicas and HAProxy running; ports 50061.. and 50050).
# Needs: target/release/framesrv (or FRAMESRV_BIN), haproxy, ffmpeg (`bash scripts/dev.sh setup`).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

REPLICAS=3 CACHE=48MiB VIDEOS=30 DURATION=20 REQUESTS="" CONCURRENCY=16 BALANCE=consistent MEDIA="" KEEP=0 COMPARE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --replicas) REPLICAS="$2"; shift 2 ;;
    --cache) CACHE="$2"; shift 2 ;;
    --videos) VIDEOS="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --requests) REQUESTS="$2"; shift 2 ;;
    --concurrency) CONCURRENCY="$2"; shift 2 ;;
    --balance) BALANCE="$2"; shift 2 ;;
    --media) MEDIA="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --compare) COMPARE=1; shift ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done

BIN="${FRAMESRV_BIN:-$ROOT/target/release/framesrv}"
[ -x "$BIN" ] || { echo "no $BIN: cargo build --release (or set FRAMESRV_BIN)" >&2; exit 1; }
BENCH="$(dirname "$BIN")/framesrv-bench"
command -v haproxy >/dev/null || { echo "haproxy is not installed: bash scripts/dev.sh setup" >&2; exit 1; }
WORK="${FRAMESRV_REPLICAS_DIR:-$ROOT/target/replicas}"
mkdir -p "$WORK"
LB=127.0.0.1:50050
PIDS=()

stop_all() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}
trap 'stop_all' EXIT

if [ -z "$MEDIA" ]; then
  MEDIA="$WORK/media"
  mkdir -p "$MEDIA"
  if [ ! -f "$MEDIA/v01.mp4" ]; then
    echo "generating $VIDEOS clips in $MEDIA" >&2
    ffmpeg -v error -y -f lavfi -i "testsrc2=size=480x270:rate=25" -t 10 -c:v libx264 -preset veryfast \
      -bf 3 -g 50 -pix_fmt yuv420p "$WORK/clip.mp4"
  fi
  for i in $(seq -w 1 "$VIDEOS"); do
    [ -f "$MEDIA/v$i.mp4" ] || cp "$WORK/clip.mp4" "$MEDIA/v$i.mp4"
  done
fi
VIDEO_LIST=$(cd "$MEDIA" && ls | head -n "$VIDEOS" | paste -sd, -)

# Start replicas 1..n on 5006x with `cache` each.
start_replicas() {
  local n="$1" cache="$2"
  # A replica told to stop keeps serving until HAProxy's checks (1 s x 2) take it out.
  printf '[limits]\nshutdown_delay_s = 3\n' > "$WORK/replica.toml"
  for i in $(seq 1 "$n"); do
    local port=$((50060 + i))
    "$BIN" serve --listen "127.0.0.1:$port" --media-root "$MEDIA" --cache-size "$cache" \
      --state-dir none --replica-name "r$i" --log-level warn --config "$WORK/replica.toml" 2>"$WORK/r$i.log" &
    PIDS+=($!)
  done
  for i in $(seq 1 "$n"); do
    for _ in $(seq 100); do
      curl -sf "http://127.0.0.1:$((50060 + i))/readyz" >/dev/null && break
      sleep 0.1
    done
  done
}

# HAProxy with the committed config, its server list made to match, and `balance` as asked.
start_haproxy() {
  local n="$1" mode="$2" cfg="$WORK/haproxy.cfg"
  awk -v n="$n" '
    /^    server r[0-9]+ / { if (!done) { for (i = 1; i <= n; i++) printf "    server r%d 127.0.0.1:%d\n", i, 50060 + i; done = 1 } next }
    { print }' deploy/haproxy/haproxy.cfg > "$cfg"
  if [ "$mode" = roundrobin ]; then
    sed -i -e 's/^    balance hdr(x-framesrv-video)/    balance roundrobin/' -e '/^    hash-type consistent/d' \
      -e '/^    hash-balance-factor/d' "$cfg"
  fi
  haproxy -f "$cfg" -db 2>"$WORK/haproxy.log" &
  PIDS+=($!)
  for _ in $(seq 100); do
    curl -sf "http://$LB/readyz" >/dev/null && break
    sleep 0.1
  done
}

# One figure: start, load, report. Prints "mode hit_rate misses decoded rps errors split" last.
run_one() {
  local mode="$1" n="$REPLICAS" cache="$CACHE"
  if [ "$mode" = single ]; then
    n=1
    cache="$(( $(numfmt --from=iec "${CACHE%iB}") * REPLICAS / 1048576 ))MiB"
  fi
  local amount=(--duration "$DURATION") what="${DURATION}s"
  [ -n "$REQUESTS" ] && amount=(--requests "$REQUESTS") && what="$REQUESTS requests"
  echo "== $mode: $n replica(s), cache $cache each, $VIDEOS videos, zipf, $CONCURRENCY clients, $what" >&2
  start_replicas "$n" "$cache"
  start_haproxy "$n" "$mode"
  "$BENCH" load --server "http://$LB" --videos "$VIDEO_LIST" --pattern zipf --concurrency "$CONCURRENCY" \
    "${amount[@]}" --keep-behind 0 --max-size 480x270 --quiet | tee "$WORK/load-$mode.txt" >&2
  local hits=0 misses=0 decoded=0
  for i in $(seq 1 "$n"); do
    local s
    s=$("$BIN" stats --server "http://127.0.0.1:$((50060 + i))")
    local h m d
    h=$(awk -F'[ /]+' '/^hits \/ misses/ {print $3}' <<<"$s")
    m=$(awk -F'[ /]+' '/^hits \/ misses/ {print $4}' <<<"$s")
    d=$(awk '/^frames decoded/ {print $3}' <<<"$s")
    echo "  r$i: cache hits $h, misses $m, frames decoded $d" >&2
    hits=$((hits + h)); misses=$((misses + m)); decoded=$((decoded + d))
  done
  local rps errors split
  rps=$(awk '/requests .* req\/s/ {print $(NF-1)}' "$WORK/load-$mode.txt")
  errors=$(awk '/^  errors/ {print $2}' "$WORK/load-$mode.txt")
  split=$(awk -F': ' '/more than one replica/ {print $2}' "$WORK/load-$mode.txt")
  if [ "$KEEP" = 1 ] && [ "$COMPARE" = 0 ]; then
    echo "replicas and HAProxy left running (HAProxy on $LB); stop them with: kill ${PIDS[*]}" >&2
    trap - EXIT
  else
    stop_all
  fi
  echo "$mode $(awk -v h="$hits" -v m="$misses" 'BEGIN { printf "%.3f", (h + m) ? h / (h + m) : 0 }') $misses $decoded $rps $errors ${split:-0}"
}

if [ "$COMPARE" = 1 ]; then
  rows=()
  for mode in consistent roundrobin single; do rows+=("$(run_one "$mode" | tail -1)"); done
  echo
  echo "| balance | replicas x cache | hit rate | cache misses (cold decodes) | frames decoded | req/s | errors | videos on >1 replica |"
  echo "|---|---|---|---|---|---|---|---|"
  for r in "${rows[@]}"; do
    read -r mode rate misses decoded rps errors split <<<"$r"
    case "$mode" in
      single) shape="1 x $(( $(numfmt --from=iec "${CACHE%iB}") * REPLICAS / 1048576 ))MiB" ;;
      *) shape="$REPLICAS x $CACHE" ;;
    esac
    echo "| $mode | $shape | $rate | $misses | $decoded | $rps | $errors | $split |"
  done
else
  run_one "$BALANCE" | tail -1
fi

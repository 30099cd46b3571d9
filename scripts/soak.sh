#!/usr/bin/env bash
# Soak: one daemon under mixed load for a long time, its RSS sampled every second.
#
#   bash scripts/soak.sh [--duration S (1800)] [--cache SIZE (256MiB)] [--out DIR (target/soak)]
#
# The load, all at once for the whole run:
#   framesrv-bench load: random (4 clients, native size), sequential (2), backtrack (2), zipf (4,
#   fit in 640x360), and one slow reader streaming whole videos;
#   HTTP: frames by URL and storyboards (curl, one at a time);
#   frame jobs: hashes of a range, a clip export, dups (the CLI, one after another).
# Writes DIR/rss.csv (seconds, RSS MiB), DIR/*.log, and DIR/rss.png (scripts/plot_rss.py), and
# prints the load's request and error counts. Needs target/release/framesrv, ffmpeg, curl and the
# .venv (`bash scripts/dev.sh setup`).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
DURATION=1800 CACHE=256MiB OUT="$ROOT/target/soak"
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION="$2"; shift 2 ;;
    --cache) CACHE="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
BIN="${FRAMESRV_BIN:-$ROOT/target/release/framesrv}"
[ -x "$BIN" ] || { echo "no $BIN: cargo build --release" >&2; exit 1; }
BENCH="$(dirname "$BIN")/framesrv-bench"
MEDIA="$OUT/media"
mkdir -p "$MEDIA"
gen() { [ -f "$MEDIA/$1" ] || ffmpeg -v error -y -f lavfi -i "$2" -t "$3" "${@:4}" "$MEDIA/$1"; }
gen a720.mp4 testsrc2=size=1280x720:rate=30 60 -c:v libx264 -preset veryfast -bf 3 -g 60 -pix_fmt yuv420p
gen b480.mkv testsrc2=size=854x480:rate=25 60 -c:v libx264 -preset veryfast -g 50 -pix_fmt yuv420p
gen c360.webm testsrc2=size=640x360:rate=25 30 -c:v libvpx-vp9 -deadline realtime -g 50
gen d270.mp4 testsrc2=size=480x270:rate=25 120 -c:v libx264 -preset veryfast -bf 2 -g 250 -pix_fmt yuv420p
VIDEOS=a720.mp4,b480.mkv,c360.webm,d270.mp4
ADDR=127.0.0.1:50071
SERVER="http://$ADDR"
PIDS=()
stop_all() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap stop_all EXIT

"$BIN" serve --listen "$ADDR" --media-root "$MEDIA" --cache-size "$CACHE" --state-dir none > "$OUT/daemon.log" 2>&1 &
DAEMON=$!
PIDS+=("$DAEMON")
for _ in $(seq 100); do curl -sf "$SERVER/readyz" >/dev/null && break; sleep 0.1; done
echo "soak: $DURATION s against pid $DAEMON, cache $CACHE, out $OUT" >&2

load() { "$BENCH" load --server "$SERVER" --videos "$VIDEOS" --duration "$DURATION" --quiet "$@"; }
load --pattern random --concurrency 4 > "$OUT/random.log" 2>&1 & PIDS+=($!)
load --pattern sequential --concurrency 2 --seed 2 > "$OUT/sequential.log" 2>&1 & PIDS+=($!)
load --pattern backtrack --concurrency 2 --seed 3 > "$OUT/backtrack.log" 2>&1 & PIDS+=($!)
load --pattern zipf --concurrency 3 --max-size 640x360 --slow-readers 1 --seed 4 > "$OUT/zipf.log" 2>&1 & PIDS+=($!)
LOADS=("${PIDS[@]:1}")
rm -f "$OUT/http-requests.log" "$OUT/jobs.err"
END=$((SECONDS + DURATION))
(
  ok=0 bad=0
  while [ $SECONDS -lt $END ]; do
    v=$(shuf -n1 -e a720.mp4 b480.mkv c360.webm d270.mp4)
    for url in "v1/videos/$v/frames/$((RANDOM % 700))?format=jpeg" "v1/videos/$v/storyboard?tiles=16"; do
      read -r code took < <(curl -s -o /dev/null -w '%{http_code} %{time_total}\n' "$SERVER/$url")
      echo "$code $took $url" >> "$OUT/http-requests.log"
      case "$code" in 200) ok=$((ok + 1)) ;; *) bad=$((bad + 1)); echo "HTTP $code $url" ;; esac
    done
  done
  echo "http: $ok ok, $bad errors"
) > "$OUT/http.log" 2>&1 & PIDS+=($!)
(
  ok=0 bad=0
  export FRAMESRV_SERVER="$SERVER"
  while [ $SECONDS -lt $END ]; do
    for job in "hashes --range 0:200 d270.mp4" "clip --range 100:160 --output $OUT/clip.mp4 b480.mkv" "dups c360.webm"; do
      # shellcheck disable=SC2086
      if "$BIN" $job > /dev/null 2>> "$OUT/jobs.err"; then ok=$((ok + 1)); else bad=$((bad + 1)); fi
    done
  done
  echo "jobs: $ok ok, $bad errors"
) > "$OUT/jobs.log" 2>&1 & PIDS+=($!)
LOADS+=("${PIDS[@]: -2}")

echo "seconds,rss_mib" > "$OUT/rss.csv"
start=$SECONDS
while [ $SECONDS -lt $END ] && kill -0 "$DAEMON" 2>/dev/null; do
  rss_kib=$(awk '/^VmRSS/ {print $2}' "/proc/$DAEMON/status")
  echo "$((SECONDS - start)),$((rss_kib / 1024))" >> "$OUT/rss.csv"
  sleep 1
done
kill -0 "$DAEMON" 2>/dev/null || { echo "soak: the daemon died" >&2; exit 1; }
for p in "${LOADS[@]}"; do wait "$p" || true; done
sleep 2
"$BIN" stats --server "$SERVER" > "$OUT/stats.txt" 2>&1 || true
for f in random sequential backtrack zipf http jobs; do echo "== $f"; grep -iE 'requests|errors|ok' "$OUT/$f.log" | head -4 || true; done
"$ROOT/.venv/bin/python" scripts/plot_rss.py "$OUT/rss.csv" "$OUT/rss.png"

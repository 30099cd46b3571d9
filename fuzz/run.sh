#!/usr/bin/env bash
# Run one fuzz target for a while, on the stable toolchain (no sanitizer: see RELIABILITY.md).
#   bash fuzz/run.sh TARGET [SECONDS]      targets: index_build index_entry seek_plan names config
# Seeds the corpus first if it is missing (fuzz/seed.sh). Findings land in fuzz/artifacts/TARGET/;
# replay one with: cargo fuzz run -s none TARGET fuzz/artifacts/TARGET/crash-…
set -euo pipefail
cd "$(dirname "$0")/.."
target="${1:?target: index_build index_entry seek_plan names config}"
seconds="${2:-1200}"
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
[ -d fuzz/corpus/"$target" ] || bash fuzz/seed.sh
args=(-max_total_time="$seconds" -print_final_stats=1)
case "$target" in
  # Real files up to 128 KiB; a decode pass over a damaged one may take a while, never 10 s.
  index_build) args+=(-timeout=10 -max_len=131072) ;;
  config) args+=(-dict=fuzz/config.dict) ;;
esac
exec cargo fuzz run -s none "$target" fuzz/corpus/"$target" -- "${args[@]}"

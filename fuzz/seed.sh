#!/usr/bin/env bash
# The fuzz targets' seed corpus, in fuzz/corpus/<target>/ (not committed; regenerate at will).
#   index_build, index_entry: the corrupt-input test's videos and more containers
#                             (tests/corrupt.rs, write_fuzz_seeds)
#   names:  names and HTTP paths the daemon's tests use, with ones that try to climb out
#   config: the shipped config files
#   seek_plan: starts empty; libFuzzer grows it
set -euo pipefail
cd "$(dirname "$0")/.."
corpus="$PWD/fuzz/corpus"
mkdir -p "$corpus"/{index_build,index_entry,names,config,seek_plan}
FRAMESRV_FUZZ_CORPUS="$corpus" cargo test -q --test corrupt -- --ignored write_fuzz_seeds
i=0
for name in a.mp4 sub/b.mkv 'sp ace%20.mp4' c.webm in.mp4 out/secret.mp4 ../outside/secret.mp4 \
  secret.mp4 abs.mp4 loop /etc/passwd file:a.mp4 concat:a.mp4 'a.mp4/frames/3' 'sub/b.mkv/at/1.5' \
  'a.mp4/frames/-1' 'sub/b.mkv/storyboard' './a.mp4' 'sub/../a.mp4' 'a.mp4\0x'; do
  printf '%s' "$name" > "$corpus/names/seed-$i"; i=$((i + 1))
done
for f in config/*.toml; do cp "$f" "$corpus/config/"; done
echo "seed corpus in $corpus:"; for d in "$corpus"/*; do echo "  $(basename "$d"): $(ls "$d" | wc -l) files"; done

#!/usr/bin/env bash
# framesrv's one entry point for developers and CI, on Debian 12 as root (or with sudo).
#
#   bash scripts/dev.sh setup   install what this machine lacks (idempotent), nothing else
#   bash scripts/dev.sh run     setup, build, create a sample video if ./media is empty, serve it
#   bash scripts/dev.sh test    setup, build, run every test (Rust unit + integration, Python client)
#   bash scripts/dev.sh bench   setup, build, run the full benchmark comparison (minutes)
#   bash scripts/dev.sh smoke   setup, build, run a seconds-long pass of the benchmark harness
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT="$PWD"

APT_PACKAGES=(
  build-essential pkg-config clang libclang-dev
  ffmpeg libavcodec-dev libavformat-dev libavfilter-dev libavutil-dev libswscale-dev
  python3 python3-venv python3-pip ca-certificates curl
  chromium chromium-driver haproxy
)
# Pinned so that the Python client test is reproducible.
PY_PACKAGES=(
  "grpcio==1.76.0" "grpcio-tools==1.76.0" "grpcio-reflection==1.76.0"
  "grpcio-health-checking==1.76.0" "protobuf>=6.31,<7" "pytest==8.4.2" "Pillow>=10,<12" "numpy>=1.26,<3"
  "requests==2.32.5" "prometheus-client==0.23.1" "selenium==4.38.0"
)

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

setup_system() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

setup_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
      export PATH="$HOME/.cargo/bin:$PATH"
    else
      # Debian 12's own rustc (1.63) is too old for tonic; rustup installs a current stable.
      log "installing the Rust toolchain with rustup"
      curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
      export PATH="$HOME/.cargo/bin:$PATH"
    fi
  fi
}

setup_python() {
  if [ ! -x .venv/bin/python ]; then
    log "creating .venv for the Python client tests"
    python3 -m venv .venv
  fi
  local stamp=".venv/.framesrv-deps"
  local want
  want="$(printf '%s\n' "${PY_PACKAGES[@]}")"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    log "installing Python test dependencies"
    .venv/bin/pip install -q --disable-pip-version-check "${PY_PACKAGES[@]}"
    printf '%s' "$want" > "$stamp"
  fi
  # The client package, built as users build it (stubs generated from proto/ by its setup.py),
  # every time: the tests must see the current proto and client code.
  log "installing the Python client package (clients/python)"
  .venv/bin/pip install -q --disable-pip-version-check --force-reinstall --no-deps ./clients/python
}

setup() {
  setup_system
  setup_rust
}

make_sample() {
  local media="${FRAMESRV_MEDIA_ROOT:-$ROOT/media}"
  mkdir -p "$media"
  if [ -z "$(ls -A "$media")" ]; then
    log "media root $media is empty: creating sample.mp4 (1280x720, 30 fps, 20 s, h264 with B-frames)"
    ffmpeg -v error -y -f lavfi -i "testsrc2=size=1280x720:rate=30" -t 20 \
      -c:v libx264 -preset veryfast -bf 3 -g 60 -pix_fmt yuv420p "$media/sample.mp4"
  fi
}

cmd="${1:-}"
case "$cmd" in
  setup)
    setup
    setup_python
    ;;
  run)
    setup
    cargo build --release
    make_sample
    cat >&2 <<MSG

framesrv is starting on 127.0.0.1:50051 with media root ./media. From another shell:
  ./target/release/framesrv ls
  ./target/release/framesrv info sample.mp4
  ./target/release/framesrv get sample.mp4 --index 42 -o frame42.png
  ./target/release/framesrv get sample.mp4 --time 12.5 --max-size 640x360 -o t12.jpg
  ./target/release/framesrv storyboard sample.mp4 --tiles 50 -o strip.jpg
  ./target/release/framesrv clip sample.mp4 --range 0:100 -o clip.mp4
  curl -o f42.jpg http://127.0.0.1:50051/v1/videos/sample.mp4/frames/42
The viewer: http://127.0.0.1:50051/ . Metrics: http://127.0.0.1:50051/metrics .
Stop it with Ctrl-C.

MSG
    exec ./target/release/framesrv serve --media-root "${FRAMESRV_MEDIA_ROOT:-$ROOT/media}" "${@:2}"
    ;;
  test)
    setup
    setup_python
    # Formatting and lints first: seconds, and they fail before the long part. The components
    # ship with the stable toolchain; where a minimal install lacks them, rustup adds them.
    if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
      rustup component add rustfmt clippy >/dev/null 2>&1 || log "rustfmt/clippy unavailable: skipping those checks"
    fi
    if cargo fmt --version >/dev/null 2>&1; then
      log "cargo fmt --check"
      cargo fmt --check
    fi
    if cargo clippy --version >/dev/null 2>&1; then
      log "cargo clippy --all-targets -- -D warnings"
      cargo clippy --all-targets -- -D warnings
    fi
    log "building and running the Rust tests"
    cargo build --bins
    cargo test --no-fail-fast 2>&1
    log "a seconds-long pass of the benchmark harness, so it never rots"
    ./target/debug/framesrv-bench compare --smoke --out target/bench-smoke
    log "running the Python client tests against a real daemon"
    FRAMESRV_BIN="$ROOT/target/debug/framesrv" .venv/bin/python -m pytest -q tests/python
    ;;
  bench)
    setup
    cargo build --release
    exec ./target/release/framesrv-bench compare "${@:2}"
    ;;
  smoke)
    setup
    cargo build --release
    exec ./target/release/framesrv-bench compare --smoke "${@:2}"
    ;;
  *)
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac

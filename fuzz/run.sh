#!/bin/sh
# Fuzz one target for a while: fuzz/run.sh TARGET [SECONDS]  (default 600)
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). New inputs
# collect in fuzz/corpus/TARGET (not committed); the committed seeds are only read.
# A finding is written to fuzz/artifacts/TARGET/: copy it into fuzz/regressions/TARGET/
# once fixed, and tests/fuzz_corpus.rs replays it on every test run.
set -eu
target=$1
seconds=${2:-600}
cd "$(dirname "$0")/.."
mkdir -p "fuzz/corpus/$target"
exec cargo +nightly fuzz run -O "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1

#!/usr/bin/env bash
# Drive the terminal app in tmux as a user over SSH would (140x45, half-blocks) and time:
# start -> first probabilities on screen, and a typed label -> its probability shown.
# Saves screen captures under docs/screens/. Usage: bench/tui_latency.sh MODEL_DIR IMAGE
set -euo pipefail
dir=$1 img=$2
bin=${CLIPSCOPE_BIN:-target/release/clipscope}
out=docs/screens; mkdir -p "$out"
now_ms() { date +%s%3N; }
wait_for() { # pattern, timeout ms
  local start; start=$(now_ms)
  until tmux capture-pane -p -t lat | grep -qE "$1"; do
    (( $(now_ms) - start > $2 )) && { echo "timeout waiting for $1"; tmux capture-pane -p -t lat; return 1; }
    sleep 0.01
  done
}
tmux kill-session -t lat 2>/dev/null || true
t0=$(now_ms)
tmux new-session -d -s lat -x 140 -y 45 \
  "$bin tui '$img' --labels 'a cat,a dog,an astronaut,a rocket' --model-dir '$dir' --image-protocol halfblocks; echo exit=\$? > /tmp/clipscope-tui-exit"
wait_for '│a cat +[0-9.]+%' 30000
t1=$(now_ms); echo "first probabilities after $((t1 - t0)) ms"
tmux capture-pane -p -t lat > "$out/classify.txt"
for label in "a cup of coffee" "a red sports car" "a tabby kitten"; do
  tmux send-keys -t lat Enter "$label"
  t2=$(now_ms)
  wait_for "│$label +[0-9.]+%" 10000
  # wait until the "updating" marker is gone: the whole list is current
  until ! tmux capture-pane -p -t lat | grep -q 'updating'; do sleep 0.01; done
  t3=$(now_ms); echo "typed '$label' -> scored on screen after $((t3 - t2)) ms (includes the 120 ms pause)"
done
tmux capture-pane -p -t lat > "$out/classify-typed.txt"
tmux send-keys -t lat F1; sleep 0.3; tmux capture-pane -p -t lat > "$out/help.txt"
# Separate sends: Esc followed at once by another key reads as Alt-key.
tmux send-keys -t lat Escape; sleep 0.3
tmux send-keys -t lat M-3; sleep 0.3; tmux capture-pane -p -t lat > "$out/results.txt"
tmux send-keys -t lat C-o; sleep 0.2; tmux send-keys -t lat "co" Tab; sleep 0.3
tmux capture-pane -p -t lat > "$out/open-prompt.txt"
tmux send-keys -t lat Escape; sleep 0.3
tmux send-keys -t lat C-c; sleep 1
cat /tmp/clipscope-tui-exit
tmux kill-session -t lat 2>/dev/null || true

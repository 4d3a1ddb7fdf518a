#!/usr/bin/env bash
# kvant-chat driven through a real terminal (a tmux pane): ask a question and read the
# streamed answer, stop a long answer with Ctrl-C mid-way, /stats, /reset, /quit.
#   chat_pty_test.sh BIN_DIR
# Exits 77 (skipped) when the default model is not fetched or tmux is missing.
set -euo pipefail
BIN=$1
command -v tmux >/dev/null || { echo "SKIP: tmux is not installed"; exit 77; }
MODEL_DIR=${KVANT_DEFAULT_MODEL:-${KVANT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kvant}/models/SmolLM2-135M-Instruct}
[ -f "$MODEL_DIR/.complete" ] || [ -n "${KVANT_DEFAULT_MODEL:-}" ] || { echo "SKIP: the default model is not fetched"; exit 77; }

work=$(mktemp -d)
sock="kvant-pty-$$"
cleanup() { tmux -L "$sock" kill-server 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
"$BIN/kvant-convert" "$MODEL_DIR" --dtype q8 -o "$work/model.kvant" --quiet

pane() { tmux -L "$sock" capture-pane -p -J -S -200 -t chat; }
# wait_for PATTERN SECONDS: until the pane shows PATTERN (grep -E).
wait_for() {
  local deadline=$((SECONDS + $2))
  while ((SECONDS < deadline)); do
    pane | grep -qE -- "$1" && return 0
    sleep 0.2
  done
  echo "FAIL: no '$1' within $2 s; the pane shows:"; pane; exit 1
}
count() { pane | grep -cE -- "$1" || true; }

tmux -L "$sock" new-session -d -s chat -x 160 -y 50 \
  "'$BIN/kvant-chat' -m '$work/model.kvant' -c 2048 --no-history; echo CHAT-EXITED-\$?; sleep 30"
wait_for '^> $' 60
echo "ok: prompt shown"

tmux -L "$sock" send-keys -t chat 'What is the capital of France?' Enter
wait_for 'Paris' 60
wait_for '^> $' 60
echo "ok: answered with Paris"

tmux -L "$sock" send-keys -t chat 'Write a very long story about a dragon and a knight, in ten chapters.' Enter
# Streaming: text appears while the answer is still being written; then Ctrl-C.
before=$(pane | wc -c)
deadline=$((SECONDS + 60))
while (( $(pane | wc -c) < before + 120 )); do
  ((SECONDS < deadline)) || { echo "FAIL: no streamed text"; pane; exit 1; }
  sleep 0.1
done
tmux -L "$sock" send-keys -t chat C-c
wait_for '\[stopped\]' 20
wait_for '^> $' 20
echo "ok: Ctrl-C stopped the answer and the chat goes on"

tmux -L "$sock" send-keys -t chat '/stats' Enter
wait_for '^context +[0-9]+ of 2048 tokens, 4 messages' 10
echo "ok: /stats"

tmux -L "$sock" send-keys -t chat '/reset' Enter
wait_for 'conversation reset' 10
tmux -L "$sock" send-keys -t chat '/stats' Enter
wait_for '^context +0 of 2048 tokens, 0 messages' 10
echo "ok: /reset"

# Ctrl-C at the prompt drops the line being typed, not the program.
tmux -L "$sock" send-keys -t chat 'half a line' C-c
sleep 0.5
tmux -L "$sock" send-keys -t chat '/help' Enter
wait_for '/save FILE' 10
pane | grep -q 'half a line/help' && { echo "FAIL: Ctrl-C did not drop the line"; exit 1; }
echo "ok: Ctrl-C at the prompt"

tmux -L "$sock" send-keys -t chat '/quit' Enter
wait_for 'CHAT-EXITED-0' 10
echo "ok: /quit exits with status 0"

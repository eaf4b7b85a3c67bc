#!/usr/bin/env bash
# Claude Code (pinned in lib.sh) in Vertex mode through `tokenrelay run`, against a
# Vertex-shaped fake upstream (fixtures/fake-clouds.py: `…/publishers/anthropic/models/M:streamRawPredict`
# answered only with a live Google token) and a `kind = "google"` source (an authorized_user file
# refreshed at the fake OAuth endpoint). Claude Code runs with CLAUDE_CODE_USE_VERTEX=1,
# CLAUDE_CODE_SKIP_VERTEX_AUTH=1 (no Google credential of its own), ANTHROPIC_VERTEX_BASE_URL
# pointed at the proxy, and the run's local key in ANTHROPIC_CUSTOM_HEADERS; tokenrelay strips
# that key and injects the Google bearer.
set -euo pipefail
# shellcheck source=e2e/lib.sh
source "$(dirname "$0")/lib.sh"
e2e_init claude-code-vertex
ensure_claude
CLAUDE="$TOOLS/claude/node_modules/.bin/claude"

python3 "$FIX/fake-clouds.py" "$WORK" 60 2>"$WORK/fake.log" &
PIDS+=($!)
for ((i = 0; i < 100; i++)); do
    [[ -s "$WORK/clouds.json" ]] && break
    sleep 0.1
done
[[ -s "$WORK/clouds.json" ]] || fail "fake-clouds did not start: $(cat "$WORK/fake.log")"
URL="$(json "$WORK/clouds.json" 'd["url"]')"
(umask 077 && python3 - "$WORK" <<'PY'
import json, sys
c = json.load(open(sys.argv[1] + "/clouds.json"))
json.dump(dict(c["user"], type="authorized_user"), open(sys.argv[1] + "/adc.json", "w"))
PY
)
printf '[[provider]]\nname = "vertex"\nupstream = "%s"\n[provider.source]\nkind = "google"\ncredentials_file = "%s"\ntoken_uri = "%s"\n' \
    "$URL" "$WORK/adc.json" "$URL/oauth/token" >"$WORK/tokenrelay.toml"
mkdir -p "$WORK/home" "$WORK/ws"
code=0
(cd "$WORK/ws" && timeout 120 env -u ANTHROPIC_API_KEY -u ANTHROPIC_AUTH_TOKEN -u GOOGLE_APPLICATION_CREDENTIALS \
    HOME="$WORK/home" XDG_CONFIG_HOME="$WORK/home/.config" CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 \
    DISABLE_AUTOUPDATER=1 DISABLE_TELEMETRY=1 NO_COLOR=1 CLAUDE_CODE_USE_VERTEX=1 CLAUDE_CODE_SKIP_VERTEX_AUTH=1 \
    CLOUD_ML_REGION=us-east5 ANTHROPIC_VERTEX_PROJECT_ID=proj \
    "$TOKENRELAY" run --config "$WORK/tokenrelay.toml" -- sh -c \
    'ANTHROPIC_VERTEX_BASE_URL="$TOKENRELAY_URL/v1" ANTHROPIC_CUSTOM_HEADERS="x-api-key: $TOKENRELAY_LOCAL_KEY" exec "$0" -p "say hi"' \
    "$CLAUDE" >"$WORK/out.txt" 2>"$WORK/err.txt") || code=$?
[[ $code -eq 0 ]] || fail "claude (Vertex mode) exited $code: $(tail -c 600 "$WORK/out.txt" "$WORK/err.txt")"
grep -q "pong from vertex" "$WORK/out.txt" || fail "answer not printed; got: $(head -c 400 "$WORK/out.txt")"
st="$(http get "$URL/__stats")"
calls="$(echo "$st" | json - 'd.get("vertex_claude", 0)')"
bad="$(echo "$st" | json - 'd.get("upstream_rejected", 0)')"
[[ "$calls" -ge 1 && "$bad" -eq 0 ]] || fail "upstream saw $calls Claude-on-Vertex calls, rejected $bad: $st"
echo "PASS claude-code-vertex: claude -p in Vertex mode through tokenrelay run: $calls streamRawPredict calls with a Google token, 0 rejected"

#!/usr/bin/env bash
# OpenAI Python SDK (PyPI openai, pinned in lib.sh, in a venv under e2e/.tools/) through
# `tokenrelay serve`: chat completions and the Responses API, streaming and not, over several
# 3-second token lifetimes, with one forced revocation mid-run.
# Asserts every answer, that the SDK saw only 200s, that the upstream rejected only the revoked
# request (which the proxy retried), and how many acquisitions happened.
set -euo pipefail
# shellcheck source=e2e/lib.sh
source "$(dirname "$0")/lib.sh"
e2e_init openai-python
ensure_venv

REQUESTS=16
start_fakes 3s
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$TOKENRELAY" serve --listen "127.0.0.1:$port" --log-level info \
    --upstream "$UPSTREAM/v1" --inject bearer --token-command "$FIX/idp-token.py" \
    2>"$WORK/serve.log" &
PIDS+=($!)
PROXY="http://127.0.0.1:$port"
wait_http "$PROXY/healthz"

started=$SECONDS
"$TOOLS/venv-openai/bin/python" "$FIX/openai_sdk_client.py" "$PROXY" "$REQUESTS" 6 0.5 \
    >"$WORK/client.json" 2>"$WORK/client.err" ||
    fail "client failed: $(cat "$WORK/client.json") $(tail -c 800 "$WORK/client.err")"
elapsed=$((SECONDS - started))
http get "$PROXY/status" >"$WORK/status.json"
http get "$PROXY/metrics" >"$WORK/metrics.txt"
# Stop the proxy (it refreshes in the background) before comparing counts.
kill "${PIDS[-1]}"
wait "${PIDS[-1]}" 2>/dev/null || true

statuses="$(json "$WORK/client.json" 'd["statuses"]')"
[[ "$statuses" == "{\"200\": $REQUESTS}" ]] || fail "the SDK saw statuses $statuses"
accepted="$(stats accepted)"
rejected="$(stats rejected)"
issued="$(stats tokens_issued)"
acq="$(json "$WORK/status.json" 'd["providers"][0]["acquisitions"]')"
retries="$(json "$WORK/status.json" 'd["providers"][0]["retries"]')"
c401="$(http metric "$WORK/metrics.txt" tokenrelay_responses_total status=401)"
[[ "$accepted" -eq "$REQUESTS" ]] || fail "upstream accepted $accepted of $REQUESTS"
[[ "$rejected" -eq 1 && "$retries" -eq 1 ]] || fail "upstream rejected $rejected, proxy retried $retries (expected 1 and 1)"
[[ "$c401" -eq 0 ]] || fail "the proxy answered $c401 requests with 401"
# /status was read before the stop; one refresh may have run (or been cut short) since.
runs="$(source_runs)"
[[ "$acq" -ge 3 && "$issued" -ge "$acq" && "$issued" -le $((acq + 1)) &&
    "$runs" -ge "$issued" && "$runs" -le $((issued + 1)) ]] ||
    fail "acquisitions $acq, IdP issued $issued, source ran $runs times"
summary "openai-python $OPENAI_PY_VERSION via tokenrelay serve: $REQUESTS requests (chat + responses, stream + not) over ${elapsed}s, all 200 at the client; upstream rejected 1 (forced), proxy retried 1; $acq acquisitions (tokens live 3s)"

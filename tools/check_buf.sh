#!/usr/bin/env bash
# Checks Tether's contracts with buf (pinned in package.json, run from node_modules):
#   lint      proto/ against the STANDARD rules, with the exceptions listed in proto/buf.yaml;
#   breaking  proto/ against proto/baseline.binpb, the committed image of the accepted contracts,
#             with the FILE rules (field numbers, types, names, removed fields and messages).
# Exits non-zero when either finds a problem.
#
# To accept a breaking change on purpose (and every other change, so the next comparison starts
# from it), rebuild the baseline in the same commit as the .proto edit:
#
#   npx --no-install buf build proto --exclude-source-info -o proto/baseline.binpb
#
# and regenerate the golden wire vectors the contract tests compare against.
set -euo pipefail

cd "$(dirname "$0")/.."

buf() {
    npx --no-install buf "$@"
}

status=0
if ! buf lint proto; then
    echo "buf lint: proto/ breaks the lint rules above" >&2
    status=1
fi
if ! buf breaking proto --against proto/baseline.binpb; then
    echo "buf breaking: proto/ is not wire- and source-compatible with proto/baseline.binpb" >&2
    echo "(accept it deliberately by rebuilding the baseline; see tools/check_buf.sh)" >&2
    status=1
fi
exit "$status"

#!/usr/bin/env bash
# The first release of an example, run from its folder with SHIPWAY_CONFIG set (its run.sh does
# both): train version 1 (it becomes Shadow), promote it to Production with each approval answered
# by this script, as `shipway demo` answers its own (yours come from a person:
# `shipway approve RUN_ID`), then one monitoring window. Needs `shipway` and python3 on PATH.
# Usage: ../release.sh MODEL_NAME
set -euo pipefail
NAME=${1:?usage: release.sh MODEL_NAME (training.model_name of the example)}
REVIEWER="release.sh (auto-approval)"

waiting() {  # "RUN_ID STAGE" of the approval the promotion waits for, or nothing
  shipway status "$NAME" --json | python3 -c 'import json, sys
w = json.load(sys.stdin)["awaiting_approval"]
print(w["run_id"], w["stage"]) if w else None'
}

shipway train --data data.csv

shipway promote "$NAME" &
promotion=$!
trap 'kill "$promotion" 2>/dev/null || true' EXIT  # a failed approval must not leave the promotion behind
answered=""
while kill -0 "$promotion" 2>/dev/null; do
  request=$(waiting || true)
  if [ -n "$request" ] && [ "$request" != "$answered" ]; then
    shipway approve "${request%% *}" --reviewer "$REVIEWER" --comment "example: approved unseen" && answered=$request
  fi
  sleep 1
done
wait "$promotion"
trap - EXIT

shipway monitor "$NAME" --window 10m

#!/usr/bin/env bash
# The first release of this example, from its folder: train version 1 (it becomes Shadow), promote
# it to Production (the approval answered by this script, as `shipway demo` answers its own;
# yours come from a person: `shipway approve RUN_ID`), then one monitoring window.
# Needs `shipway` and python3 on PATH.
set -euo pipefail
cd "$(dirname "$0")"
export SHIPWAY_CONFIG=shipway.yaml
NAME=churn-own-pipeline
REVIEWER="run.sh (auto-approval)"

waiting() {  # "RUN_ID STAGE" of the approval the promotion waits for, or nothing
  shipway status "$NAME" --json | python3 -c 'import json, sys
w = json.load(sys.stdin)["awaiting_approval"]
print(w["run_id"], w["stage"]) if w else None'
}

shipway train --data data.csv

shipway promote "$NAME" &
promotion=$!
answered=""
while kill -0 "$promotion" 2>/dev/null; do
  request=$(waiting || true)
  if [ -n "$request" ] && [ "$request" != "$answered" ]; then
    shipway approve "${request%% *}" --reviewer "$REVIEWER" --comment "example: approved unseen" && answered=$request
  fi
  sleep 1
done
wait "$promotion"

shipway monitor "$NAME" --window 10m

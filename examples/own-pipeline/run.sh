#!/usr/bin/env bash
# This example's first release, with one command from its folder: train, promote to Production
# (approvals answered), one monitoring window. The steps are in ../release.sh, shared by the examples.
set -euo pipefail
cd "$(dirname "$0")"
SHIPWAY_CONFIG=shipway.yaml exec ../release.sh churn-own-pipeline

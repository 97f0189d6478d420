#!/bin/sh
# One device, like the seed's run_1p.sh: a single worker, no sockets at all.
# Usage: cluster/run_1p.sh [worker flags...]   (logs in result/1p/0/worker.log)
# BIN selects the build (default .build/release, i.e. `make build`).
set -eu
cd "$(dirname "$0")/.."
BIN=${BIN:-.build/release}
exec "$BIN/launch" --rank-table rank_table/1p.json --log-dir "${LOG_DIR:-result/1p}" -- "$@"

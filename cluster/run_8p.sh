#!/bin/sh
# Eight devices on this host, like the seed's run_8p.sh with rank_table/8p.json: launch starts
# one worker per device (127.0.100.101-108, ports 29500-29507), compute threads = cores / 8.
# Usage: cluster/run_8p.sh [worker flags...]   (logs in result/8p/<rank>/worker.log)
# Environment: BIN (default .build/release), LOG_DIR, MAX_RESTARTS (default 0).
set -eu
cd "$(dirname "$0")/.."
BIN=${BIN:-.build/release}
exec "$BIN/launch" --rank-table rank_table/8p.json --log-dir "${LOG_DIR:-result/8p}" \
  --max-restarts "${MAX_RESTARTS:-0}" -- "$@"

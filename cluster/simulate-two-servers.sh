#!/bin/sh
# Simulates a two-server job on this machine with rank_table/2x2p.json: "server" 127.0.1.1 runs
# ranks 0-1 on 127.0.1.11-12, "server" 127.0.2.1 runs ranks 2-3 on 127.0.2.11-12 (all loopback).
# One launch per server, as on real machines; they share only the rank table and a secret file.
# Usage: cluster/simulate-two-servers.sh [worker flags...]   (logs in result/4p/<rank>/)
set -eu
cd "$(dirname "$0")/.."
BIN=${BIN:-.build/release}
LOG_DIR=${LOG_DIR:-result/4p}

# The job secret: created once, private (0600), the same file for both launches. On real
# servers it would live on a shared home directory or be copied with scp.
dir=$(mktemp -d)
secret="$dir/job.secret"
(umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > "$secret")

pids=""
cleanup() { for p in $pids; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup INT TERM

"$BIN/launch" --rank-table rank_table/2x2p.json --server-id 127.0.1.1 --secret-file "$secret" \
  --log-dir "$LOG_DIR" -- "$@" &
pids="$!"
"$BIN/launch" --rank-table rank_table/2x2p.json --server-id 127.0.2.1 --secret-file "$secret" \
  --log-dir "$LOG_DIR" -- "$@" > "$dir/server2.out" 2>&1 &
pids="$pids $!"

status=0
for p in $pids; do wait "$p" || status=1; done
sed 's/^/[server 127.0.2.1] /' "$dir/server2.out"
rm -rf "$dir"
exit $status

#!/usr/bin/env bash
# `make slurm-test`: a real one-node Slurm cluster on this machine, then the example users copy.
# Installs Debian's slurm-wlm and munge if missing, starts munged, slurmctld and slurmd as root on
# 127.0.0.1 with every file (config, key, state, spool, logs) in a temporary directory, submits
# cluster/slurm/train.sbatch for 2 tasks with `sbatch --wait` on a tiny synthetic dataset, and checks
# that both ranks finished and rank 0 wrote its checkpoint. The daemons are stopped on every exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
BIN=${BIN:-$REPO/.build/release}
STEPS=4
fail() { echo "make slurm-test: $*"; exit 1; }
[ "$(id -u)" = 0 ] || fail "must run as root (the daemons and the job run as root here)"
for exe in worker dataset; do [ -x "$BIN/$exe" ] || fail "$BIN/$exe is missing (swift build -c release)"; done

missing=""
for p in slurm-wlm munge; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "installing Debian packages:$missing"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

T=$(mktemp -d /tmp/mnv2-slurm.XXXXXX)
pids=()
cleanup() {
  status=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$status" = 0 ]; then
    rm -rf "$T"
  else
    for f in "$T"/slurm-*.out "$T"/train/logs/rank-*.log "$T"/slurmctld.log "$T"/slurmd.log "$T"/munged.log; do
      [ -f "$f" ] && { echo "--- $f (last lines)"; tail -8 "$f"; }
    done
    echo "make slurm-test: FAILED (files kept in $T)"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# Two free loopback ports for the daemons (bound by nobody but them afterwards).
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
CTLD_PORT=$(free_port)
SLURMD_PORT=$(free_port)
[ "$CTLD_PORT" != "$SLURMD_PORT" ] || SLURMD_PORT=$(free_port)
CPUS=$(nproc)
[ "$CPUS" -ge 2 ] || CPUS=2

mkdir -p "$T/munge" "$T/state" "$T/spool"
chmod 700 "$T/munge"
mungekey --create --keyfile="$T/munge/munge.key" 2>/dev/null || fail "mungekey cannot create a key"
munged --foreground --force --key-file="$T/munge/munge.key" --socket="$T/munge/munge.socket" \
  --pid-file="$T/munge/munged.pid" --log-file="$T/munged.log" --seed-file="$T/munge/munged.seed" >> "$T/munged.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do [ -S "$T/munge/munge.socket" ] && break; sleep 0.1; done
[ -S "$T/munge/munge.socket" ] || fail "munged did not start"

# NoInAddrAny/NoCtldInAddrAny: the daemons bind localhost's address (127.0.0.1), never 0.0.0.0.
cat > "$T/slurm.conf" <<EOF
ClusterName=mnv2test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$T/munge/munge.socket
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool
SlurmctldPidFile=$T/slurmctld.pid
SlurmdPidFile=$T/slurmd.pid
SlurmctldLogFile=$T/slurmctld.log
SlurmdLogFile=$T/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=30 State=UP
EOF
export SLURM_CONF=$T/slurm.conf
slurmctld -D -i -f "$SLURM_CONF" > "$T/slurmctld.stdout" 2>&1 &
pids+=($!)
slurmd -D -N localhost -f "$SLURM_CONF" > "$T/slurmd.stdout" 2>&1 &
pids+=($!)
state=""
for _ in $(seq 120); do
  state=$(sinfo -h -n localhost -o %t 2>/dev/null || true)
  [ "$state" = idle ] && break
  sleep 0.5
done
[ "$state" = idle ] || fail "the node did not become idle (state '${state:-no answer}')"
echo "slurm-test: slurmctld :$CTLD_PORT and slurmd :$SLURMD_PORT on 127.0.0.1, node localhost idle with $CPUS CPUs"

"$BIN/dataset" synth --output "$T/data" --classes 4 --train-examples 64 --validation-examples 0 --image-size 32 --shards 2 >/dev/null

start=$(date +%s)
export REPO BIN TRAIN_DIR="$T/train"
export TRAIN_ARGS="--dataset-dir $T/data --model-name mobilenet_v2_035 --num-classes 4 --image-size 32 --batch-size 8 --max-train-steps $STEPS --log-every-n-steps 1 --checkpoint-format safetensors --no-summaries"
sbatch --wait --nodes=1 --ntasks=2 --ntasks-per-node=2 --cpus-per-task=1 --time=10 \
  --chdir="$T" --output="$T/slurm-%j.out" cluster/slurm/train.sbatch \
  || fail "sbatch --wait: the job failed"
seconds=$(( $(date +%s) - start ))

for r in 0 1; do
  grep -q "done: global step $STEPS" "$T/train/logs/rank-$r.log" || fail "rank $r did not finish (see its log)"
  grep -q "placement from the Slurm environment: rank $r/2" "$T/train/logs/rank-$r.log" || fail "rank $r was not placed by Slurm's variables"
done
[ -f "$T/train/model.ckpt-$STEPS.safetensors" ] || fail "rank 0's checkpoint $T/train/model.ckpt-$STEPS.safetensors is missing"
echo "slurm-test: passed — 2 ranks trained $STEPS steps under srun in ${seconds}s, rank 0 wrote model.ckpt-$STEPS.safetensors"

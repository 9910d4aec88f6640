#!/usr/bin/env bash
# Start a single-node Slurm cluster on this machine (Debian's slurm-wlm and munge), run
# deploy/slurm/classify-array.sbatch as a real three-task job array over 212 generated
# images, merge the shards, and compare the merged result with an unsharded run.
# Opt-in, not part of CI: needs root (installs packages, writes /etc/slurm and /etc/munge,
# starts munged, slurmctld and slurmd) and a built clipscope.
#
#   cargo build --release && sudo deploy/slurm/local-cluster.sh [MODEL_DIR]
#
# MODEL_DIR defaults to the tiny fixture model. The daemons are stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
bin=${CLIPSCOPE_BIN:-$repo/target/release/clipscope}
model=$(realpath "${1:-tests/fixtures/tiny-clip}")
work=${WORK:-/tmp/clipscope-slurm}
host=$(hostname -s)

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge
fi

echo "== munge"
mkdir -p /etc/munge /var/log/munge /run/munge /var/lib/munge
[ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
chown -R munge:munge /etc/munge /var/log/munge /run/munge /var/lib/munge
chmod 0400 /etc/munge/munge.key
started=()
if ! [ -S /run/munge/munge.socket.2 ] || ! munge -n >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged
    started+=(/run/munge/munged.pid)
fi
munge -n | unmunge | grep STATUS

echo "== slurm (single node: $host, $(nproc) CPUs)"
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# No cgroups or accounting in a container: track processes by parent id.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
NodeName=$host CPUs=$(nproc) State=UNKNOWN
PartitionName=main Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:3
CONF
slurmctld && started+=(/run/slurmctld.pid)
slurmd && started+=(/run/slurmd.pid)
# Stop what this script started, by process id, newest first.
stop() {
    for ((i = ${#started[@]} - 1; i >= 0; i--)); do
        kill "$(cat "${started[i]}")" 2>/dev/null || true
    done
}
trap stop EXIT
for _ in $(seq 60); do
    state=$(sinfo -h -o %T 2>/dev/null || true)
    case $state in idle*|mixed*|alloc*) break ;; esac
    sleep 1
done
sinfo

echo "== data: 212 synthetic pictures"
rm -rf "$work" && mkdir -p "$work/out"
"$bin" data shapes --to "$work/pictures" --per-class 53 --size 64 >/dev/null
find "$work/pictures" -name '*.png' | sort > "$work/list.txt"
wc -l < "$work/list.txt"

echo "== sbatch --array=0-2"
cd "$work"
# The settings travel in the environment (--export=ALL): sbatch's --export=NAME=VALUE
# list is split at commas, which would cut the labels apart.
job=$(INPUTS="$work/list.txt" LABELS="circle,cross,square,triangle" OUT="$work/out" \
    MODEL_DIR="$model" CLIPSCOPE="$bin" CLIPSCOPE_CACHE="$work/cache" \
    sbatch --parsable --array=0-2 --cpus-per-task=1 --export=ALL \
    "$repo/deploy/slurm/classify-array.sbatch")
echo "submitted job array $job"
if [ "${REQUEUE:-1}" = 1 ]; then
    # Preempt task 1 once it has results on disk: Slurm kills it and runs it again,
    # and --resume finishes the shard.
    for _ in $(seq 600); do
        [ "$(cat out/part-1.jsonl 2>/dev/null | wc -l)" -ge 16 ] && break
        sleep 0.1
    done
    echo "task 1 has $(wc -l < out/part-1.jsonl) results: scontrol requeue ${job}_1"
    scontrol requeue "${job}_1"
fi
while [ -n "$(squeue -h -j "$job" 2>/dev/null)" ]; do sleep 1; done
for f in clipscope-*.out; do echo "-- $f"; cat "$f"; done

echo "== merge"
"$bin" merge out/part-*.jsonl --output merged.jsonl

echo "== unsharded run, no cache"
CLIPSCOPE_CACHE="$work/cache" "$bin" classify --inputs list.txt --labels "circle,cross,square,triangle" \
    --model-dir "$model" --no-cache --output whole.jsonl

echo "== merged against unsharded"
python3 - <<'PY'
import json
merged = [json.loads(l) for l in open("merged.jsonl")]
whole = [json.loads(l) for l in open("whole.jsonl")]
assert [m["image"] for m in merged] == [w["image"] for w in whole], "images differ"
worst = max(
    abs(p["probability"] - {q["label"]: q["probability"] for q in w["predictions"]}[p["label"]])
    for m, w in zip(merged, whole) for p in m["predictions"]
)
print(f"{len(merged)} images, each once, in the same order; largest probability difference {worst:.2e}")
assert worst <= 1e-6
PY

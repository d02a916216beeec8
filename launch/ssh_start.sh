#!/usr/bin/env bash
# Start one worker per host over ssh (or pdsh), for clusters without a scheduler.
#   launch/ssh_start.sh "host1 host2" -- --dataset_dir /shared/data --results_dir /shared/run1 ...
# Each host needs sim-tf installed and the same paths (shared storage for data, results, checkpoints).
# With pdsh instead:  pdsh -w host[1-2] 'TF_CONFIG=$(sim-tf launch tf-config --workers host1:23456,host2:23456 \
#                        --index %n) sim-tf train ...'   (pdsh's %n is the host's rank)
set -euo pipefail
HOSTS=($1); shift
[ "${1:-}" = "--" ] && shift
PORT=${SIM_TF_PORT:-23456}
WORKERS=$(printf "%s:$PORT," "${HOSTS[@]}"); WORKERS=${WORKERS%,}
pids=()
for i in "${!HOSTS[@]}"; do
  ssh -o BatchMode=yes "${HOSTS[$i]}" \
    "TF_CONFIG='$(sim-tf launch tf-config --workers "$WORKERS" --index "$i")' sim-tf train --strategy multi_worker --collective_timeout_s 600 $*" \
    2>&1 | sed "s/^/[${HOSTS[$i]}] /" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status

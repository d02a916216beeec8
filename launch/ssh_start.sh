#!/usr/bin/env bash
# Start one worker per host over ssh, for clusters without a scheduler.
#   launch/ssh_start.sh "host1 host2" -- --dataset_dir /shared/data --results_dir /shared/run1 ...
# Each host needs sim-tf installed and the same paths (shared storage for data, results, checkpoints).
# Each argument reaches `sim-tf train` as one argument, whatever it contains: the remote command is built
# with printf %q, so the remote shell never re-splits or expands it.
# The workers' port (SIM_TF_PORT, default 23456) runs any request it gets: keep it firewalled to the
# cluster's hosts (launch/README.md, "What a cluster exposes").
set -euo pipefail
read -r -a HOSTS <<< "$1"; shift
[ "${1:-}" = "--" ] && shift
PORT=${SIM_TF_PORT:-23456}
WORKERS=$(printf "%s:$PORT," "${HOSTS[@]}"); WORKERS=${WORKERS%,}
pids=()
for i in "${!HOSTS[@]}"; do
  tf_config=$(sim-tf launch tf-config --workers "$WORKERS" --index "$i")
  remote=$(printf '%q ' env "TF_CONFIG=$tf_config" sim-tf train --strategy multi_worker "$@")
  ssh -o BatchMode=yes "${HOSTS[$i]}" "$remote" 2>&1 | sed "s/^/[${HOSTS[$i]}] /" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status

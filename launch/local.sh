#!/usr/bin/env bash
# Run one sj_jax command as N processes on this machine (CPU), joined by jax.distributed over loopback:
# the multi-process path of a GPU cluster or a TPU pod, tried on a laptop.
#   launch/local.sh 2 sj-jax jsft --config configs/jsft.yaml output_dir=runs/jsft2
# Each process sees SJ_DEVICES_PER_PROCESS CPU devices (default 1); process 0 writes the files and the
# progress, the others only their warnings, tagged "[process k/N]". A SIGTERM or Ctrl-C reaches every
# process; a SIGTERM to any one of them also stops all of them at the same step, checkpointed.
# The exit status is the first nonzero one of the processes, else 0.
set -uo pipefail
n="${1:?usage: launch/local.sh N command [args...]}"
shift
[[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "launch/local.sh: N must be a positive integer, got '$n'" >&2; exit 2; }
port="${SJ_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
export JAX_PLATFORMS=cpu HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${SJ_DEVICES_PER_PROCESS:-1}"
pids=()
for ((i = 0; i < n; i++)); do
  if ((n > 1)); then
    SJ_COORDINATOR="127.0.0.1:${port}" SJ_NUM_PROCESSES="$n" SJ_PROCESS_ID="$i" "$@" &
  else
    "$@" &
  fi
  pids+=($!)
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM INT
status=0
for pid in "${pids[@]}"; do
  while true; do
    wait "$pid"; rc=$?
    # wait returns >128 when a trapped signal interrupts it; the process may still be running
    if ((rc > 128)) && kill -0 "$pid" 2>/dev/null; then continue; fi
    break
  done
  ((status == 0 && rc != 0)) && status=$rc
done
exit "$status"

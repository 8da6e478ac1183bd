#!/usr/bin/env bash
# A TPU pod slice: the same command on every worker, one process each, joined by jax.distributed (JAX
# reads the slice's topology from the TPU metadata; SJ_DISTRIBUTED=auto asks it to).
#   launch/tpu_pod.sh my-v5e-64 us-west4-a /home/me/sj_jax sj-jax self-judge --config configs/scale/self_judge_llama3_8b_v5e64.yaml
# The project folder must exist on every worker (a shared disk, or the same git checkout and install).
# Preemption: each worker's SIGTERM makes all of them save the same step and exit 0; rerun to resume.
set -euo pipefail
(($# >= 4)) || { echo "usage: launch/tpu_pod.sh TPU_NAME ZONE PROJECT_DIR COMMAND [ARGS...]" >&2; exit 2; }
name="$1" zone="$2" dir="$3"
shift 3
printf -v cmd '%q ' "$@"
exec gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all \
  --command "cd $(printf '%q' "$dir") && SJ_DISTRIBUTED=auto HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $cmd"

#!/usr/bin/env bash
# One host, several GPUs: one process drives every GPU it sees (no jax.distributed needed); the mesh in
# the config spreads the batch (data, fsdp) and the weights (fsdp, tensor) over them.
#   launch/multi_gpu.sh sj-jax jsft --config configs/scale/jsft_llama3_8b_8xh100.yaml
# CUDA_VISIBLE_DEVICES picks the GPUs. For one process per GPU instead (as on a cluster), use
# launch/slurm_gpu.sbatch, or set SJ_COORDINATOR, SJ_NUM_PROCESSES, SJ_PROCESS_ID and SJ_LOCAL_DEVICE_IDS.
set -euo pipefail
(($# > 0)) || { echo "usage: launch/multi_gpu.sh COMMAND [ARGS...]" >&2; exit 2; }
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" HF_DATASETS_OFFLINE="${HF_DATASETS_OFFLINE:-1}"
# JAX takes 75% of each GPU's memory at start by default; a training run wants more of it.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.90}"
exec "$@"

#!/usr/bin/env bash
# Run any sj_jax command on a fake N-device CPU mesh, to try sharded layouts without accelerators.
#   launch/cpu_mesh.sh 8 python -c 'import sj_jax; m = sj_jax.load_model("smollm2-135m-instruct",
#       mesh=sj_jax.MeshConfig(data=2, tensor=4)); print(m.params["layers"]["mlp"]["up"]["kernel"].sharding)'
set -euo pipefail
n="${1:?usage: launch/cpu_mesh.sh N command [args...]}"
shift
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${n}"
export JAX_PLATFORMS=cpu HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec "$@"

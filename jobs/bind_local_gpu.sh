#!/bin/bash
# Launch wrapper for mpirun/mpiexec: give each MPI rank one GPU, chosen by its rank on the node.
#   mpirun -n 8 -ppn 4 jobs/bind_local_gpu.sh python -m hpc_fcn.ensemble CONFIG ...
# (srun does this itself with --gpus-per-task=1 --gpu-bind=closest.) The local rank comes from whichever
# launcher started us; GPUS_PER_NODE (default: the GPUs in CUDA_VISIBLE_DEVICES, else nvidia-smi) sets the
# modulus. If the scheduler already restricted the GPUs (CUDA_VISIBLE_DEVICES=2,3), the rank picks among those.
set -euo pipefail

local_rank=${OMPI_COMM_WORLD_LOCAL_RANK:-${MPI_LOCALRANKID:-${PMI_LOCAL_RANK:-${PALS_LOCAL_RANKID:-${MV2_COMM_WORLD_LOCAL_RANK:-${SLURM_LOCALID:-0}}}}}}

if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
  IFS=',' read -r -a gpus <<< "$CUDA_VISIBLE_DEVICES"
else
  mapfile -t gpus < <(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null || true)
fi
n=${GPUS_PER_NODE:-${#gpus[@]}}
if [ "${#gpus[@]}" -gt 0 ] && [ "$n" -gt 0 ]; then
  export CUDA_VISIBLE_DEVICES=${gpus[$((local_rank % n % ${#gpus[@]}))]}
fi
export LOCAL_RANK=$local_rank
# Optional NUMA pinning, e.g. with 2 sockets and 4 GPUs: numactl --cpunodebind=$((local_rank / 2)) "$@"
exec "$@"

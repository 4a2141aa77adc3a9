#!/usr/bin/env bash
# Self-supervised pre-training on several nodes under SLURM: one torchrun per node, rendezvous on the
# job's first node. Extra arguments go to the bundle, e.g.
#   sbatch --nodes=4 --gpus-per-node=8 bin/slurm_pretrain.sh --train_sources "[...]" --val_sources "[...]"
# --resume auto is always passed: a requeued or resubmitted job continues from the newest checkpoint
# (the first run finds none and starts from scratch).
#SBATCH --job-name=swin-ssl
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=48:00:00
#SBATCH --requeue
#SBATCH --output=%x-%j.out
set -euo pipefail

cd "${SLURM_SUBMIT_DIR:-$(dirname "${BASH_SOURCE[0]}")/..}"
[ -f .venv/bin/activate ] && source .venv/bin/activate
# sed reads all of its input: `head -n 1` could close the pipe early and fail the job under pipefail (SIGPIPE)
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)
gpus_per_node=${SLURM_GPUS_ON_NODE:-8}
port=${MASTER_PORT:-29500}

srun --ntasks-per-node=1 torchrun \
    --nnodes="$SLURM_NNODES" --nproc_per_node="$gpus_per_node" \
    --rdzv_id="$SLURM_JOB_ID" --rdzv_backend=c10d --rdzv_endpoint="$head_node:$port" \
    -m monai.bundle run \
    --config_file "['configs/pretrain.json','configs/multi_gpu_pretrain.json']" \
    --resume auto "$@"

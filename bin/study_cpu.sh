#!/usr/bin/env bash
# The label-efficiency study at CPU scale (docs/pretraining.md, "Does it help?"): 16 + 4 phantoms, pre-training
# on the 16 training phantoms (their images only) plus the unlabelled real CT beside the project when present,
# then scratch against each pre-trained encoder at 2 / 4 / 8 labelled phantoms x 3 seeds, every cell the same
# optimiser steps, all evaluated on the 4 held-out phantoms. Resumable: a rerun keeps the encoders and the
# finished cells, so adding a proxy-task selection later computes only its own pre-training and cells.
#   bash bin/study_cpu.sh [OUT_DIR]   # default runs/study_cpu
# Environment: PROXY_SETS (default "paper": the paper's three tasks with the bundle's heads; "paper_reference_heads"
# the same tasks with the reference code's heads and two crops of one volume per step, thin volumes kept;
# "paper_shared_turns" the bundle's heads with both views of a crop turned alike; "mim" MIM alone; "all" all four),
# PRETRAIN_ITERATIONS (200), ITERATIONS (112 fine-tuning steps per cell), WORKERS (2 cells side by side).
set -euo pipefail
out=$(realpath -m "${1:-runs/study_cpu}")  # before setup_env.sh moves to the bundle root
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
pretrain_iterations=${PRETRAIN_ITERATIONS:-200}
iterations=${ITERATIONS:-112}
real_ct=$(realpath -m ../shared/data/real_ct)
paper="['inpainting','rotation','contrastive']"
declare -A tasks=([paper]=$paper [paper_reference_heads]=$paper [paper_shared_turns]=$paper [mim]="['mim']"
  [all]="${paper%]},'mim']")
declare -A files=([paper]=paper_tasks [paper_reference_heads]=paper_tasks_reference_heads
  [paper_shared_turns]=paper_tasks_shared_turns [mim]=mim_only [all]=all_four)
declare -A extra=([paper_reference_heads]="--proxy_heads reference --batch_size 1 --num_samples 2 --min_crop_fill 0"
  [paper_shared_turns]="--view_rotation shared")

python -m scripts.tools.phantoms --out_dir "$out/data" --num_train 16 --num_val 4 --num_test 0
sources="['$out/data/dataset.json']"
if [ -d "$real_ct" ]; then sources="['$out/data/dataset.json','$real_ct/*_ct.nii.gz']"; fi
encoders="'scratch'"
mkdir -p "$out/encoders"
for name in ${PROXY_SETS:-paper}; do
  if [ -z "${tasks[$name]:-}" ]; then echo "PROXY_SETS: unknown '$name' (choose from: ${!tasks[*]})" >&2; exit 2; fi
  encoder="$out/encoders/${files[$name]}.pt"  # linked once its pre-training has finished: the resume marker
  if [ ! -f "$encoder" ]; then
    echo "=== pre-training ${tasks[$name]} ($pretrain_iterations iterations) on $sources"
    python -m monai.bundle run --config_file "['configs/pretrain.json','configs/small_pretrain.json']" \
      --proxy_tasks "${tasks[$name]}" --dataset_dir "$out/data" --train_sources "$sources" \
      --val_sources "['$out/data/dataset.json']" --max_iterations "$pretrain_iterations" --val_interval 100 \
      --ckpt_interval 100 --image_interval 100 --output_dir "$out/pretrain_$name" \
      --ckpt_dir "$out/pretrain_$name/models" --overwrite True ${extra[$name]:-}
    ln -f "$out/pretrain_$name/models/ssl_encoder.pt" "$encoder"
  fi
  encoders="$encoders,'$encoder'"
done
python -m scripts.tools.label_study --datalist "$out/data/dataset.json" --dataset_dir "$out/data" \
  --encoders "[$encoders]" --counts "[2,4,8]" --seeds "[0,1,2]" --overlays "['small.json']" \
  --iterations "$iterations" --workers "${WORKERS:-2}" --out_dir "$out/study"

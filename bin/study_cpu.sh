#!/usr/bin/env bash
# The label-efficiency study at CPU scale (docs/pretraining.md, "Does it help?"): 16 + 4 phantoms, pre-training
# on the 16 training phantoms (their images only) plus the unlabelled real CT beside the project when present,
# then scratch against that encoder at 2 / 4 / 8 labelled phantoms x 3 seeds, every cell the same optimiser steps,
# all evaluated on the 4 held-out phantoms. Resumable: a rerun keeps the encoder and the finished cells.
#   bash bin/study_cpu.sh [OUT_DIR]   # default runs/study_cpu; PRETRAIN_ITERATIONS / ITERATIONS change the budgets
set -euo pipefail
out=$(realpath -m "${1:-runs/study_cpu}")  # before setup_env.sh moves to the bundle root
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
pretrain_iterations=${PRETRAIN_ITERATIONS:-200}
iterations=${ITERATIONS:-112}
real_ct=$(realpath -m ../shared/data/real_ct)

python -m scripts.tools.phantoms --out_dir "$out/data" --num_train 16 --num_val 4 --num_test 0
sources="['$out/data/dataset.json']"
if [ -d "$real_ct" ]; then sources="['$out/data/dataset.json','$real_ct/*_ct.nii.gz']"; fi
if [ ! -f "$out/models/ssl_encoder.pt" ]; then
  echo "=== pre-training ($pretrain_iterations iterations) on $sources"
  python -m monai.bundle run --config_file "['configs/pretrain.json','configs/small_pretrain.json']" \
    --dataset_dir "$out/data" --train_sources "$sources" --val_sources "['$out/data/dataset.json']" \
    --max_iterations "$pretrain_iterations" --val_interval 100 --ckpt_interval 100 --image_interval 100 \
    --output_dir "$out/pretrain" --ckpt_dir "$out/models" --overwrite True
fi
python -m scripts.tools.label_study --datalist "$out/data/dataset.json" --dataset_dir "$out/data" \
  --encoders "['scratch','$out/models/ssl_encoder.pt']" --counts "[2,4,8]" --seeds "[0,1,2]" \
  --overlays "['small.json']" --iterations "$iterations" --out_dir "$out/study"

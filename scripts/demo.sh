#!/usr/bin/env bash
# The main job of README.md, end to end: export a DiT to an FP16 graph, build a TensorRT engine when
# TensorRT and a GPU are present, and sample images from the engine (or from the graph in ONNX
# Runtime when there is no engine).
#
# Offline by default: a RANDOM-WEIGHT DiT-S/2 and a RANDOM-WEIGHT VAE, so the picture is noise, not
# a dog; it shows the pipeline runs. For the real model on a machine with internet:
#   MODEL=XL/2 CKPT=auto VAE=mse bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-S/2}
IMAGE_SIZE=${IMAGE_SIZE:-256}
CKPT=${CKPT:-}
VAE=${VAE:-random}
STEPS=${STEPS:-50}
OUT=${OUT:-demo-output}

bash scripts/setup-env.sh
if [ -n "$CKPT" ]; then weights=(--ckpt "$CKPT"); else weights=(--random-init 0); fi
.venv/bin/dit-export --model "$MODEL" --image-size "$IMAGE_SIZE" "${weights[@]}" --fp16 --out "$OUT"

stem="DiT-${MODEL/\//-}-${IMAGE_SIZE}-fp16"
artifact="$OUT/$stem.plan"
[ -f "$artifact" ] || artifact="$OUT/$stem.onnx"
.venv/bin/dit-run "$artifact" --class 207 --class 360 --class 387 --class 974 \
    --seed 0 --steps "$STEPS" --vae "$VAE" --out "$OUT/samples.png"

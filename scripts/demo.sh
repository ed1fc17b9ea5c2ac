#!/usr/bin/env bash
# The main job of README.md, end to end: export a DiT to an FP16 graph (and, for the paper's latent
# models, its SD VAE decoder too), build TensorRT engines when TensorRT and a GPU are present, and
# sample images from the engines (or from the graphs when there are none).
#
# Offline by default: the small class-conditional DiT trained here on Fashion-MNIST and shipped in
# the package ("fashion", dit_ref/shipped/), eight samples of each of its ten classes, one row per
# class, in demo-output/samples.png. For the paper's XL/2 on a machine with internet:
#   MODEL=XL/2 CKPT=auto VAE=mse STEPS=250 bash scripts/demo.sh
# (CKPT=random gives a random-weight model, labelled RANDOM WEIGHTS: the pipeline runs, the pictures are noise;
# VAE=random a random-weight decoder, so MODEL=XL/2 CKPT=random VAE=random runs offline.) VAE: mse (auto), ema, a
# local diffusers VAE folder or random; it is exported beside the DiT as a decoder graph (and engine).
# PRECISION: fp16 (for TensorRT) unless this machine has no CUDA GPU and its CPU has bfloat16 units
# (avx512_bf16, amx_bf16): then bf16, which OpenVINO runs 2.5x faster than ONNX Runtime runs the FP16
# graph at the same accuracy (docs/benchmarks.md, the frontier). PRECISION=fp16 keeps FP16 everywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-fashion}
CKPT=${CKPT:-auto}
VAE=${VAE:-auto}
SAMPLER=${SAMPLER:-ddpm}
STEPS=${STEPS:-250}
OUT=${OUT:-demo-output}

EXTRAS=${EXTRAS:-cpu} bash scripts/setup-env.sh  # the demo needs no test tools
PRECISION=${PRECISION:-$(.venv/bin/python -c 'from dit_ref.machine.cpu import cpu_has
from dit_ref.machine.gpu_stack import cuda_unavailable_reason as no_gpu
print("bf16" if no_gpu() and cpu_has("avx512_bf16", "amx_bf16") else "fp16")')}
if [ "$CKPT" = random ]; then weights=(--random-init 0); else weights=(--ckpt "$CKPT"); fi
if [ "$MODEL" = fashion ]; then
    IMAGE_SIZE=${IMAGE_SIZE:-28}
    stem="fashion-$IMAGE_SIZE-$PRECISION"
    labels=(); for class in 0 1 2 3 4 5 6 7 8 9; do labels+=(--class "$class,$class,$class,$class,$class,$class,$class,$class"); done
    columns=8
else
    IMAGE_SIZE=${IMAGE_SIZE:-256}
    stem="DiT-${MODEL/\//-}-$IMAGE_SIZE-$PRECISION"
    labels=(--class 207 --class 360 --class 387 --class 974)
    columns=4
    [ "$VAE" = auto ] && VAE=mse
    decoder=(--vae "$VAE")  # dit-export: the DiT and its VAE decoder in one call
    vae_graph=$(.venv/bin/python -c 'import sys; from export.vae_export import decoder_file_name as name
print(name(*sys.argv[1:]))' "$VAE" "$IMAGE_SIZE" "$PRECISION")
fi
.venv/bin/dit-export --model "$MODEL" --image-size "$IMAGE_SIZE" "${weights[@]}" --precision "$PRECISION" ${decoder[@]+"${decoder[@]}"} --out "$OUT"

artifact="$OUT/$stem.plan"
[ -f "$artifact" ] || artifact="$OUT/$stem.onnx"
if [ -n "${vae_graph:-}" ]; then  # decode on the decoder's engine, or its graph
    VAE="$OUT/${vae_graph%.onnx}.plan"
    [ -f "$VAE" ] || VAE="$OUT/$vae_graph"
fi
.venv/bin/dit-run "$artifact" "${labels[@]}" --seed 0 --sampler "$SAMPLER" --steps "$STEPS" --vae "$VAE" \
    --grid-columns "$columns" --out "$OUT/samples.png"

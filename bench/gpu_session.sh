#!/usr/bin/env bash
# One lent-GPU session in one command (about 9.5 minutes on one H200):
#   1. train built-in model variants side by side (models/train.py, --minutes each) while
#   2. bench/gpu_check.py runs its correctness and ComfyUI sections on the same GPU (checks, not timings), then
#   3. bench/gpu_check.py runs the timing tables alone on the GPU.
# Needs what the GPU box lacks, carried in .gpu_carry/ (see bench/RESULTS.md, "GPU session"): emoji_pack.npz (from
# `python -m turbosample.models.train --write-data-pack .gpu_carry/emoji_pack.npz`), whl/ (diffusers, torchsde,
# trampoline wheels for the box's Python) and comfy.tar.gz (ComfyUI's Python source).
# CPU rehearsal: DEVICE=cpu TINY=1 bash bench/gpu_session.sh   (tiny shapes, seconds of training; python3 on PATH
# needs ComfyUI's requirements, e.g. einops, for the ComfyUI checks, as the GPU image has)
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_out}
DEVICE=${DEVICE:-cuda}
TINY=${TINY:-0}
DEADLINE=${DEADLINE:-570}   # seconds from start by which everything has ended
TRAIN_MIN=${TRAIN_MIN:-5.0}
START=$(date +%s)
mkdir -p "$OUT" /tmp/ts_site /tmp/ts_path /tmp/ts_ckpt
left() { echo $(( DEADLINE - ($(date +%s) - START) )); }

if ! python3 -c "import diffusers" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/ts_site .gpu_carry/whl/*.whl
fi
ln -sfn "$PWD" /tmp/ts_path/turbosample
export PYTHONPATH="/tmp/ts_path:/tmp/ts_site:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
COMFY=/tmp/ts_comfy
if [ -f .gpu_carry/comfy.tar.gz ]; then mkdir -p "$COMFY" && tar xzf .gpu_carry/comfy.tar.gz -C "$COMFY"; fi
{ nvidia-smi 2>&1 || true; python3 -c "import torch, diffusers; print(torch.__version__, diffusers.__version__)"; } \
  > "$OUT/session.txt"

PACK=.gpu_carry/emoji_pack.npz
AE=models/ae_f8c8.safetensors
# All train the shipped recipe's DiT on the shipped autoencoder's 8x8x8 latents (patch 2: 16 tokens), the prompt
# embedding scaled by 40, the 32 px steps on 32 px images' 4x4 latents (--latent-low-res). A: the shipped shape from
# scratch at GPU batch sizes, B: deeper (14 blocks, 13.6 MB in fp16, under the 16 MiB cap), C: the shipped weights
# fine-tuned at GPU batch sizes (--init).
LATENT="--autoencoder $AE --latent-low-res --patch 2"
if [ "$TINY" = 1 ]; then
  SIZE_A="--width 32 --depth 2 --heads 2 --batch 16 --batch-high 8"
  SIZE_B="--width 32 --depth 3 --heads 2 --batch 16 --batch-high 8"
  SIZE_C="--width 192 --depth 10 --heads 6 --batch 8 --batch-high 4 --init models/builtin_emoji.safetensors"
  TRAIN_EXTRA="--subset 64 --threads 1"; CHECK_EXTRA="--tiny"; TRAIN_MIN=0.2
else
  SIZE_A="--width 192 --depth 10 --heads 6 --batch 1024 --batch-high 1024"
  SIZE_B="--width 192 --depth 14 --heads 6 --batch 1024 --batch-high 1024"
  SIZE_C="--width 192 --depth 10 --heads 6 --batch 1024 --batch-high 1024 --init models/builtin_emoji.safetensors
          --lr 4e-4"
  TRAIN_EXTRA="--compile"; CHECK_EXTRA=""
fi
# Mostly 64 px: in latent space a 64 px step (16 tokens) is cheap, and the 32 px steps (4 tokens) only teach the
# model the smaller size that Bottleneck Sampling and the 32 px setting use.
COMMON="--data-pack $PACK $LATENT --device $DEVICE --minutes $TRAIN_MIN --steps-low 0 --steps-mixed 10000
        --p-high 0.7 --lr 1e-3 --warmup 300 --ema 0.999 --text-scale 40 --log-every 200 --checkpoint-every 2000
        $TRAIN_EXTRA"
pids=""
for v in A B C; do
  size_var="SIZE_$v"
  # shellcheck disable=SC2086
  python3 -m turbosample.models.train $COMMON ${!size_var} --out "/tmp/ts_ckpt/builtin_$v.safetensors" \
    > "$OUT/train_$v.log" 2>&1 &
  pids="$pids $!"
done

COMFY_ARG=""; [ -d "$COMFY/comfy" ] && COMFY_ARG="--comfyui $COMFY"
# shellcheck disable=SC2086
timeout $(( $(left) - 200 )) python3 bench/gpu_check.py --device "$DEVICE" --sections correctness,comfy $COMFY_ARG \
  --out "$OUT/gpu_check.jsonl" --budget-s $(( $(left) - 215 )) $CHECK_EXTRA > "$OUT/gpu_check.log" 2>&1
for p in $pids; do
  timeout $(( $(left) - 190 > 1 ? $(left) - 190 : 1 )) tail --pid="$p" -f /dev/null || kill "$p"
done
for v in A B C; do  # the final weights, or the last checkpoint of a run cut short
  f=/tmp/ts_ckpt/builtin_$v.safetensors
  [ -f "$f" ] || f=/tmp/ts_ckpt/builtin_$v.partial.safetensors
  [ -f "$f" ] && cp "$f" "$OUT/builtin_$v.safetensors"
done
# shellcheck disable=SC2086
timeout $(( $(left) > 10 ? $(left) - 5 : 5 )) python3 bench/gpu_check.py --device "$DEVICE" --sections tables \
  --out "$OUT/gpu_check.jsonl" --budget-s $(( $(left) - 15 )) $CHECK_EXTRA >> "$OUT/gpu_check.log" 2>&1
echo "session done in $(( $(date +%s) - START ))s" >> "$OUT/session.txt"
cat "$OUT/session.txt" "$OUT"/train_?.log > "$OUT/train.log" && rm -f "$OUT/session.txt" "$OUT"/train_?.log  # 8 files max

#!/usr/bin/env bash
# One prepared GPU session: the speed figures of docs/benchmarks.md and a synthetic end-to-end experiment
# (docs/results.md), in one call that ends by itself inside a deadline.
#
#   OUT=/some/dir BACKBONE=r18_densecl.pth PARITY=dir_with_make_official_checkpoint.py \
#       DEADLINE=540 bash bench/gpu_suite.sh
#
# BACKBONE: a DenseCL ResNet-18 for the experiment, e.g. `unsolo pretrain --preset small_r18` on
# `unsolo synth DIR --num-images 512 --size 192 --seed 0` (docs/pretrain.md); copy it (and PARITY's
# make_official_checkpoint.py with its key list) into a git-ignored folder that the device call carries.
# OUT gets suite.log (everything printed, with elapsed seconds) and experiment.tar.gz (coarse masks and predictions
# on the held-out split, training logs, ground truth) to be scored with `unsolo evaluate` afterwards.
# Each step has its own time limit, so one failing or slow step does not stop the others.
set -u
OUT=${OUT:-/tmp/gpu_suite}
DEADLINE=${DEADLINE:-540}
BACKBONE=${BACKBONE:-}
PARITY=${PARITY:-}
EXP_ITERS=${EXP_ITERS:-600}  # 0.40 s per iteration of 16 images alone on an H200; two runs share the GPU
EXP_TRAIN=${EXP_TRAIN:-2000}
EXP_EVAL=${EXP_EVAL:-200}
DEVICE=${DEVICE:-cuda}  # cpu: a local dry run of the experiment part (SKIP_SPEED=1)
SKIP_SPEED=${SKIP_SPEED:-0}
LOG=$OUT/suite.log
RESERVE=25  # for packing the experiment
source "$(dirname "$0")/gpu_common.sh"

log "host $(hostname), $(nproc) cores"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >>"$LOG" 2>&1
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, \
'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" >>"$LOG" 2>&1
python3 -c "import pycocotools, cv2, skimage" >>"$LOG" 2>&1 || log "WARNING: a dependency is missing"

# ---- speed ------------------------------------------------------------------------------------------------------
if [ "$SKIP_SPEED" = 0 ]; then
OFFICIAL=/tmp/official_r101.pth
if [ -n "$PARITY" ]; then step official-checkpoint 40 python3 "$PARITY/make_official_checkpoint.py" 0 "$OFFICIAL"; fi
W=(); [ -f "$OFFICIAL" ] && W=(--weights "$OFFICIAL")
step solo-r101-amp-b1 50 python3 bench/bench_solo_infer.py "${W[@]}" --device cuda --amp --runs 30 --warmup 5
step solo-r101-amp-b8 45 python3 bench/bench_solo_infer.py "${W[@]}" --device cuda --amp --runs 6 --warmup 2 --batch-size 8
step solo-r101-fp32-b1 35 python3 bench/bench_solo_infer.py "${W[@]}" --device cuda --runs 10 --warmup 3
step freemask-r101-amp 45 python3 bench/bench_freemask.py --arch resnet101 --device cuda --amp --images 16 --repeats 3 --skip-cli
step freemask-r50-amp 40 python3 bench/bench_freemask.py --arch resnet50 --device cuda --amp --images 16 --repeats 3 --skip-cli
step train-r101-amp-b8 90 python3 bench/bench_train.py --preset freesolo_r101 --device cuda --amp --batch-size 8 \
  --size 800 --images 16 --iters 14 --skip 4 --workers 8
step pretrain-r50 45 python3 bench/bench_pretrain.py --preset densecl_r50 --device cuda --repeats 5
fi

# ---- experiment: the method on 2000 synthetic 192 px images, scored on 200 held-out ones ----------------------------
EXP=${EXP:-/tmp/exp}
pack() {
  [ -d "$EXP" ] || return
  log "packing the experiment"
  # held-out outputs and logs only: the training split's coarse masks alone exceed the 16 MB a file may take back
  (cd "$EXP" && tar czf "$OUT/experiment.tar.gz" eval/annotations.json coarse_eval.json pred_*.json \
     */metrics.jsonl */config.yaml */used_checkpoint.txt 2>/dev/null)
}
trap pack EXIT
if [ -n "$BACKBONE" ] && [ -f "$BACKBONE" ]; then
  step synth-train 60 python3 -m unsolo synth "$EXP/train" --num-images "$EXP_TRAIN" --size 192 --seed 0 --workers 14
  step synth-eval 30 python3 -m unsolo synth "$EXP/eval" --num-images "$EXP_EVAL" --size 192 --seed 1 --workers 14
  step freemask-train 150 python3 -m unsolo freemask "$EXP/train/images" --weights "$BACKBONE" --arch resnet18 \
    --preset small --out "$EXP/coarse.json" --workers 12 --device "$DEVICE"
  step freemask-eval 40 python3 -m unsolo freemask "$EXP/eval/images" --weights "$BACKBONE" --arch resnet18 \
    --preset small --out "$EXP/coarse_eval.json" --workers 12 --device "$DEVICE"
  # SOLO on the coarse masks: the FreeSOLO weak losses, and the full-mask Dice ablation (Table 7d), side by side
  # (small_r18 trains with full-mask Dice by default since 2026-11-26: the weak row must ask for the weak losses)
  train_args=(--labels "$EXP/coarse.json" --backbone-weights "$BACKBONE" --preset small_r18 --iters "$EXP_ITERS"
              --batch-size 16 --workers 6 --amp --set amp_dtype=bfloat16 --set solver.checkpoint_period=250
              --set solver.log_period=20 --device "$DEVICE")
  left=$(( DEADLINE - 70 - $(elapsed) ))
  log "== training both variants for at most ${left}s"
  timeout -s INT -k 10 "$left" python3 -m unsolo train "$EXP/train/images" "${train_args[@]}" --out "$EXP/weak" \
    --set model.loss.mask_loss=weak >"$EXP/weak.log" 2>&1 &
  P1=$!
  timeout -s INT -k 10 "$left" python3 -m unsolo train "$EXP/train/images" "${train_args[@]}" --out "$EXP/full" \
    --set model.loss.mask_loss=full >"$EXP/full.log" 2>&1 &
  P2=$!
  wait $P1; log "weak rc=$?"; wait $P2; log "full rc=$?"
  tail -c 3000 "$EXP/weak.log" >>"$LOG"; tail -c 1500 "$EXP/full.log" >>"$LOG"
  for v in weak full; do
    ck="$EXP/$v/model_final.pth"
    [ -f "$ck" ] || ck=$(ls -1 "$EXP/$v"/model_0*.pth 2>/dev/null | tail -n 1)
    if [ -n "$ck" ]; then
      log "$v: predicting with $ck"
      step "predict-$v" 40 python3 -m unsolo predict "$EXP/eval/images" --model "$ck" --out "$EXP/pred_$v.json" \
        --short-side 224 --max-side 373 --batch-size 8 --workers 8 --device "$DEVICE"
      echo "$ck" >"$EXP/$v/used_checkpoint.txt"
    fi
  done
else
  log "no BACKBONE: experiment skipped"
fi
log "done"

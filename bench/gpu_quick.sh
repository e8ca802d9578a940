#!/usr/bin/env bash
# The short GPU check after bench/gpu_suite.sh: the speed figures again after the fixes it prompted (target
# assignment on the host, tight boxes on the device), with a device-time profile of inference and a per-phase
# profile of one training iteration.   OUT=dir PARITY=dir DEADLINE=270 bash bench/gpu_quick.sh
set -u
OUT=${OUT:-/tmp/gpu_quick}; DEADLINE=${DEADLINE:-270}; PARITY=${PARITY:-}
LOG=$OUT/quick.log; RESERVE=5
source "$(dirname "$0")/gpu_common.sh"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" >>"$LOG" 2>&1
OFFICIAL=/tmp/official_r101.pth
[ -n "$PARITY" ] && step official-checkpoint 30 python3 "$PARITY/make_official_checkpoint.py" 0 "$OFFICIAL"
W=(); [ -f "$OFFICIAL" ] && W=(--weights "$OFFICIAL")
step solo-r101-amp-b1 40 python3 bench/bench_solo_infer.py "${W[@]}" --device cuda --amp --runs 20 --warmup 5 --profile 12
step train-step-phases 50 python3 bench/profile_train_step.py --device cuda --size 192 --images 16 \
  --set solver.ims_per_batch=16 --iters 3 --ops
step train-small-r18-b16 60 python3 bench/bench_train.py --preset small_r18 --device cuda --amp --batch-size 16 \
  --size 192 --images 64 --iters 40 --skip 10 --workers 8
step train-r101-amp-b8 70 python3 bench/bench_train.py --preset freesolo_r101 --device cuda --amp --batch-size 8 \
  --size 800 --images 16 --iters 12 --skip 4 --workers 8
step pretrain-r50 30 python3 bench/bench_pretrain.py --preset densecl_r50 --device cuda --repeats 5
log done

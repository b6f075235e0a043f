#!/bin/bash
# The GPU benchmarks of docs/speed.md, in the order they were run (2026-12-04, one NVIDIA
# H200, torch 2.11.0+cu130): each `tbps bench` call's JSON appended to $OUT/results.jsonl
# with the step's name. About 9 minutes on that machine (the last three steps, added later, about
# 5 more). Usage: bash docs/gpu_h200/run.sh OUT
set -u
OUT=${1:-gpu-bench}; mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 WANDB_MODE=disabled PYTHONUNBUFFERED=1
TBPS=${TBPS:-tbps}
step() {  # step NAME ARGS...: one benchmark, its JSON tagged with the step's name
  name=$1; shift
  echo "== $name: tbps bench --device cuda $*"
  $TBPS bench --device cuda "$@" --out "$OUT/$name.json" &&
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); d['step']=sys.argv[2]; print(json.dumps(d))" \
      "$OUT/$name.json" "$name" >> "$OUT/results.jsonl"
}
step train_b128 --only train --steps 20                # IRRA's model, eager
step eval --only eval                                  # three test-set sizes, IRRA's rank() beside
step train_b128_compile --only train --steps 20 --compile
step crue --only train --steps 10 --experiment crue_synthetic
step ucfa --only train --steps 10 --experiment ucfa_synthetic
step rde --only train --steps 10 --experiment rde_synthetic
step acsa --only train --steps 10 --experiment acsa_synthetic
step full --steps 10                                   # + gallery encoding, the loader
step train_b64 --only train --steps 20 --batch-size 64
step train_b256 --only train --steps 10 --batch-size 256
# added after the 2026-12-04 session, not yet run on a GPU: activation checkpointing's
# operating points, and ACSA's re-scoring with a GPU's larger blocks (the eval step above)
step train_b128_ckpt --only train --steps 20 --grad-checkpointing
step train_b128_ckpt_compile --only train --steps 20 --grad-checkpointing --compile
step train_b128_profile --only train --steps 10 --profile   # where the eager step's time goes

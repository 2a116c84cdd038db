#!/usr/bin/env bash
# One device run: trainer efficiency at EVE-7B width (4 layers) and on the `small` preset.
#
#   bash benchmarks/gpu_suite.sh                # on the GPU machine, from the repository root
#   EVE_SUITE_CPU=1 bash benchmarks/gpu_suite.sh  # every code path on CPU with tiny sizes
#
# Installs nothing from the network. Python packages the GPU image lacks (DeepSpeed, pydantic,
# hjson) are taken from ./.whl (cp312 wheels) and ./.site (a copied site-packages tree) when
# present. Writes env.txt, results.jsonl and log.txt to $OUT (default ./gpu-suite-out) and
# prints a table last. Each group of configurations runs in its own process with a time budget,
# so one crash or OOM costs one group at most; configurations are in priority order.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/gpu-suite-out}
mkdir -p "$OUT"
rm -f "$OUT/results.jsonl" "$OUT/log.txt"
T0=$(date +%s)
TOTAL_S=${EVE_SUITE_TOTAL_S:-450}
PY=${PYTHON:-python3}

if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/eve-site .whl/*.whl \
    || echo "wheel install failed" >&2
  export PYTHONPATH=/tmp/eve-site:${PYTHONPATH:-}
fi
[ -d .site ] && export PYTHONPATH=$ROOT/.site:${PYTHONPATH:-}
export PYTHONPATH=$ROOT:$ROOT/trainer:$ROOT/operator:${PYTHONPATH:-}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

{
  date -u; cat .commit 2>/dev/null; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
  $PY -c 'import sys, torch, transformers, deepspeed; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__, "deepspeed", deepspeed.__version__)' 2>&1 | tail -1
} | tee "$OUT/env.txt"

SUITE=$(mktemp -d)
if [ -n "${EVE_SUITE_CPU:-}" ]; then   # tiny sizes: test each code path on a CPU
  export DS_ACCELERATOR=cpu
  M="preset=tiny seq=256 steps=2 bare=false"
  cat >"$SUITE/1.txt" <<LIST
a-pad $M micro=4 dist=caption
a-pack-chunk $M micro=8 dist=caption pack=true loss_chunk=128
a-nogroup $M micro=4 dist=caption group=false
a-sft-pack $M micro=4 dist=sft pack=true
LIST
  cat >"$SUITE/2.txt" <<LIST
a-z3-ckpt $M micro=4 dist=caption pack=true zero=3 checkpointing=true loss_chunk=128 compile=true
s-full $M micro=2 dist=full bare=true
LIST
  BUDGETS=(200 200)
else
  A="width=7b layers=4 seq=2048 steps=8 bare=false"
  S="preset=small seq=2048 steps=8 bare=false"
  # group 1, eager: padding vs packing, micro batch, chunked loss, SFT lengths, ZeRO-3, checkpointing
  cat >"$SUITE/1.txt" <<LIST
a-cap-pad-m8        $A micro=8  dist=caption
a-cap-pack-m8       $A micro=8  dist=caption pack=true
a-cap-pack-m24      $A micro=24 dist=caption pack=true
a-cap-pack-m24-ce   $A micro=24 dist=caption pack=true loss_chunk=4096
a-cap-nogroup-m8    $A micro=8  dist=caption group=false
a-sft-pad-m4        $A micro=4  dist=sft
a-sft-pack-m4       $A micro=4  dist=sft pack=true loss_chunk=4096
a-cap-pack-m24-z3   $A micro=24 dist=caption pack=true loss_chunk=4096 zero=3
a-cap-pack-m64-ckpt $A micro=64 dist=caption pack=true loss_chunk=4096 checkpointing=true
LIST
  # group 2, compiled decoder layers and FlexAttention; the earlier `small` 40% configuration
  cat >"$SUITE/2.txt" <<LIST
a-cap-pack-m24-ce-c $A micro=24 dist=caption pack=true loss_chunk=4096 compile=true
a-full-m8-c         $A micro=8  dist=full loss_chunk=4096 compile=true
s-full-m14-c        $S micro=14 dist=full compile=true
a-cap-pack-m24-flex $A micro=24 dist=caption pack=true loss_chunk=4096 attn=flex_attention
s-cap-pack-m48-ce-c $S micro=48 dist=caption pack=true loss_chunk=4096 compile=true
LIST
  BUDGETS=(190 0)
  if [ "${EVE_SUITE_SET:-1}" = 2 ]; then  # the second device run: what the first had no time for
    cat >"$SUITE/1.txt" <<LIST
a-cap-pack-m24-ce-z3  $A micro=24 dist=caption pack=true loss_chunk=4096 zero=3
a-sft-pad-m8          $A micro=8  dist=sft
a-sft-pack-m8         $A micro=8  dist=sft pack=true
a-cap-pack-m64-ce-ckpt $A micro=64 dist=caption pack=true loss_chunk=4096 checkpointing=true
LIST
    cat >"$SUITE/2.txt" <<LIST
a-cap-pack-m24-ce-c   $A micro=24 dist=caption pack=true loss_chunk=4096 compile=true
a8-cap-pack-m24-ce-c  width=7b layers=8 seq=2048 steps=8 bare=false micro=24 dist=caption pack=true loss_chunk=4096 compile=true
a8-full-m8-c          width=7b layers=8 seq=2048 steps=8 bare=false micro=8 dist=full loss_chunk=4096 compile=true
a-cap-pack-m24-flex   $A micro=24 dist=caption pack=true loss_chunk=4096 attn=flex_attention
LIST
    BUDGETS=(115 0)
  fi
fi

for i in 1 2; do
  LEFT=$(( TOTAL_S - ($(date +%s) - T0) ))
  BUDGET=${BUDGETS[$((i-1))]}
  [ "$BUDGET" -eq 0 ] || [ "$BUDGET" -gt "$LEFT" ] && BUDGET=$(( LEFT - 60 ))
  [ "$LEFT" -lt 60 ] && { echo "group $i: no time left" | tee -a "$OUT/log.txt"; continue; }
  echo "== group $i: budget ${BUDGET}s, ${LEFT}s left" | tee -a "$OUT/log.txt"
  timeout $(( LEFT - 10 )) $PY benchmarks/bench_trainer.py --gpu --suite "$SUITE/$i.txt" --out "$OUT/results.jsonl" \
    --budget-s "$BUDGET" >>"$OUT/log.txt" 2>&1
  echo "group $i exit $?" | tee -a "$OUT/log.txt"
done

$PY - "$OUT/results.jsonl" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])] if __import__("os").path.exists(sys.argv[1]) else []
print(f"{'name':24} {'tok/s':>9} {'pad':>5} {'MFU':>6} {'TF/s':>6} {'step s':>7} {'GiB':>6}  note")
for r in rows:
    if "mfu" in r:
        print(f"{r['name']:24} {r['tokens_per_s']:9.0f} {r['padding_fraction']:5.1%} {r['mfu']:6.1%} "
              f"{r['model_tflops_per_s']:6.1f} {r['trainer_step_s']:7.3f} {r['max_memory_gib'] or 0:6.1f}  "
              f"build {r['build_s']}s warm {r['warmup_s']}s")
    else:
        print(f"{r['name']:24} {r.get('error') or r.get('skipped')}"[:160])
PYEOF
echo "total $(( $(date +%s) - T0 ))s"

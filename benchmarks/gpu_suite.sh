#!/usr/bin/env bash
# One device run: issue 23's efficiency levers at EVE-7B width, each beside today's path.
#
#   bash benchmarks/gpu_suite.sh                # on the GPU machine, from the repository root
#   EVE_SUITE_GROUPS="3 2" bash benchmarks/gpu_suite.sh   # a second device run: 32 layers, then the rest
#   EVE_SUITE_CPU=1 bash benchmarks/gpu_suite.sh  # smoke: the suite's code paths on CPU, tiny sizes (~30 s)
#
# The H200 runs of 2026-11-27 used the previous set (4 layers, `small`); git history has it.
#
# Installs nothing from the network. Python packages the GPU image lacks (DeepSpeed, pydantic,
# hjson) are taken from ./.whl (cp312 wheels) and ./.site (a copied site-packages tree) when
# present. Writes env.txt, results.jsonl and log.txt to $OUT (default
# benchmarks/results/gpu-<date>-levers; a run with EVE_SUITE_GROUPS appends to it) and
# prints a table last. Each group of configurations runs in its own process with a time budget,
# so one crash or OOM costs one group at most; configurations are in priority order.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/benchmarks/results/gpu-$(date -u +%F)-levers}
mkdir -p "$OUT"
[ -n "${EVE_SUITE_GROUPS:-}" ] || rm -f "$OUT/results.jsonl" "$OUT/log.txt"
T0=$(date +%s)
TOTAL_S=${EVE_SUITE_TOTAL_S:-540}
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
# Issue 23's levers, each alone and all together, beside today's path in the same run. Today's
# path ("base"): masked SDPA (attn=sdpa), the loss chunked with per-chunk recompute
# (loss_chunk=4096 fused=false), compiled layers. The levers: attn=varlen (FlashAttention varlen)
# or attn=flex (FlexAttention BlockMask), fused=true (fused linear + CE), compile,
# selective activation checkpointing (model.checkpoint_every / model.checkpoint_part), and
# "all" = attn=varlen (the FlashAttention varlen kernel on bf16 CUDA) + fused + compile. Profiles: EVE caption lengths
# packed, EVE SFT lengths padded vs packed; 8 layers of EVE-7B width; 32 layers with ZeRO-3 and
# the optimizer offloaded to the CPU. Groups run in priority order, each in its own process.
A8="width=7b layers=8 seq=2048 steps=6 bare=false"
A32="width=7b layers=32 seq=2048 steps=4 bare=false zero=3 deepspeed.offload_optimizer=true checkpointing=true"
BASE="attn=sdpa loss_chunk=4096 fused=false compile=true"
ALL="attn=varlen loss_chunk=4096 fused=true compile=true"
# group 1: the issue's two "done when" comparisons (caption >= 45 % MFU; SFT packed faster than padded)
cat >"$SUITE/1.txt" <<LIST
cap-base       $A8 micro=24 dist=caption pack=true $BASE
cap-all        $A8 micro=24 dist=caption pack=true $ALL
sft-pad-base   $A8 micro=8  dist=sft $BASE
sft-pack-all   $A8 micro=8  dist=sft pack=true $ALL
sft-pack-base  $A8 micro=8  dist=sft pack=true $BASE
sft-pad-all    $A8 micro=8  dist=sft $ALL
LIST
# group 2: each lever alone on packed caption batches (base with one thing changed)
cat >"$SUITE/2.txt" <<LIST
cap-varlen     $A8 micro=24 dist=caption pack=true attn=varlen loss_chunk=4096 fused=false compile=true
cap-flex       $A8 micro=24 dist=caption pack=true attn=flex loss_chunk=4096 fused=false compile=true
cap-fused      $A8 micro=24 dist=caption pack=true attn=sdpa loss_chunk=4096 fused=true compile=true
cap-eager      $A8 micro=24 dist=caption pack=true attn=sdpa loss_chunk=4096 fused=false compile=false
cap-all-m48-ckpt     $A8 micro=48 dist=caption pack=true $ALL checkpointing=true
cap-all-m48-sac2     $A8 micro=48 dist=caption pack=true $ALL checkpointing=true model.checkpoint_every=2
cap-all-m48-sacmlp   $A8 micro=48 dist=caption pack=true $ALL checkpointing=true model.checkpoint_part=mlp
LIST
# group 3: 32 layers, ZeRO-3, optimizer on the CPU (one device: does it fit, and at what MFU)
cat >"$SUITE/3.txt" <<LIST
z3-32-cap-base $A32 micro=16 dist=caption pack=true $BASE
z3-32-cap-all  $A32 micro=16 dist=caption pack=true $ALL model.checkpoint_every=2
LIST
BUDGETS=(200 170 0)
if [ -n "${EVE_SUITE_CPU:-}" ]; then   # smoke: the same configurations' code paths on a CPU, tiny sizes
  export DS_ACCELERATOR=cpu
  # one line per code path, in one process: base, all levers (compile off: inductor on CPU is the
  # slow part; compiled layers are tested in tests/model), varlen, flex, SAC, SFT padded,
  # ZeRO-3 + optimizer offload + checkpointing
  T="preset=tiny seq=256 steps=1 bare=false micro=4 n_batches=2"
  grep -hE '^(cap-base|cap-all|cap-varlen|cap-flex|sft-pad-base|cap-all-m48-sacmlp|z3-32-cap-all) ' "$SUITE"/[123].txt \
    | sed -E 's/(width|layers|seq|steps|micro|bare)=[^ ]+//g; s/compile=true/compile=false/; s/loss_chunk=4096/loss_chunk=64/' \
    | awk -v t="$T" '{name=$1; $1=""; print name, t, $0}' >"$SUITE/cpu.txt"
  mv "$SUITE/cpu.txt" "$SUITE/1.txt"; : >"$SUITE/2.txt"; : >"$SUITE/3.txt"
  TOTAL_S=${EVE_SUITE_TOTAL_S:-1800}  # no time budget to speak of: every line must run (a busy CPU is slow)
  BUDGETS=(1700 0 0)
fi
# A configuration at 8 layers costs ~40-70 s (build ~30 s, compile warm-up, 6 steps), so one
# 9-minute run reaches group 1 and part of group 2; EVE_SUITE_GROUPS="3 2" is the second run.
for i in ${EVE_SUITE_GROUPS:-1 2 3}; do
  LEFT=$(( TOTAL_S - ($(date +%s) - T0) ))
  BUDGET=${BUDGETS[$((i-1))]}
  [ -s "$SUITE/$i.txt" ] || continue
  [ "$BUDGET" -eq 0 ] || [ "$BUDGET" -gt "$LEFT" ] && BUDGET=$(( LEFT - 60 ))
  [ "$LEFT" -lt 60 ] && { echo "group $i: no time left" | tee -a "$OUT/log.txt"; continue; }
  echo "== group $i: budget ${BUDGET}s, ${LEFT}s left" | tee -a "$OUT/log.txt"
  timeout $(( LEFT - 10 )) $PY benchmarks/bench_trainer.py --gpu --suite "$SUITE/$i.txt" --out "$OUT/results.jsonl" \
    --budget-s "$BUDGET" >>"$OUT/log.txt" 2>&1
  echo "group $i exit $?" | tee -a "$OUT/log.txt"
done

$PY - "$OUT/results.jsonl" <<'PYEOF'
import json, os, sys
rows = [json.loads(l) for l in open(sys.argv[1])] if os.path.exists(sys.argv[1]) else []
by_name = {r["name"]: r for r in rows if "mfu" in r}
def base_of(name):  # each configuration against today's path, same profile, same run
    return "sft-pad-base" if name.startswith("sft") else "z3-32-cap-base" if name.startswith("z3") else "cap-base"
print(f"{'name':20} {'attention':9} {'tok/s':>9} {'vs base':>7} {'pad':>5} {'MFU':>6} {'TF/s':>6} {'step s':>7} {'GiB':>6}  note")
for r in rows:
    if "mfu" in r:
        base = by_name.get(base_of(r["name"]))
        ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:6.2f}x" if base else "      -"
        path = ",".join(r.get("attention_path") or [str(r.get("attn"))])
        print(f"{r['name']:20} {path:9} {r['tokens_per_s']:9.0f} {ratio:>7} {r['padding_fraction']:5.1%} {r['mfu']:6.1%} "
              f"{r['model_tflops_per_s']:6.1f} {r['trainer_step_s']:7.3f} {r['max_memory_gib'] or 0:6.1f}  "
              f"build {r['build_s']}s warm {r['warmup_s']}s")
    else:
        print(f"{r['name']:20} {r.get('error') or r.get('skipped')}"[:160])
PYEOF
echo "total $(( $(date +%s) - T0 ))s"

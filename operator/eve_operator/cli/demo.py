"""`eve-platform demo` (`make demo`): the tiny EVE chain learns something you can see, on this machine.

1. Synthetic data that can be learnt (`data synth --profile shapes`): a coloured shape per image;
   captions say what and where ("A red circle on the left.");
   the SFT conversations ask about them ("Is there a red circle in the image?" yes/no, "What color is
   the square?"). Held-out samples of the same kind for the validation loss of every stage, and two
   held-out benchmarks of unseen images, in the formats of two of EVE's benchmarks: yes/no questions in
   POPE's (`write_shapes_pope`: half yes, half no; chance 50 %) and colour questions in GQA's
   (`write_shapes_gqa`: exact match; 4 colours, chance 25 %).
2. The initial model (the trainer's random initialisation, `eve_trainer.initial_export`) is scored on
   both with `eve-eval`: chance or below.
3. prealign -> pretrain -> sft, longer than the tiny recipe (DEMO_OVERRIDES), with validation; the
   pipeline itself scores the sft export on both benchmarks (spec.eval: an eve-eval job after sft).
4. Both models' scores side by side, against chance, and the seconds evaluation added.

The CLI stays torch-free: the initial export and its scoring run as processes of their own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import typer

from eve_operator.cli.common import fail, info

#: The demo's training, beyond the tiny recipe (which the tests keep short): long enough on two CPU
#: cores for the chain to ground colours and shapes (tuned on the shapes data; docs/benchmarks.md).
DEMO_OVERRIDES = [
    "global_batch_size=16", "data.max_length=160", "optim.lr=3e-3", "optim.warmup_ratio=0.03",
    "checkpoint.every_steps=1000", "mlflow.log_every=25",
    "prealign.max_steps=20", "pretrain.max_steps=120", "sft.max_steps=300",
]
#: The benchmark's generation: answers are one word, so a few tokens suffice (eve-eval's default is 128).
EVAL_WORDS = ["max_new_tokens=16", "batch_size=50"]
IMAGE_SIZE = (64, 128)
BENCH_IMAGES = 50  # POPE: 200 questions (2 categories x (1 yes + 1 no) per image); GQA: 50 colour questions
#: benchmark -> (its writer in eve_trainer.data.synth, seed of its images, chance, headline score)
BENCHES = {"pope": ("write_shapes_pope", 1000, 0.50, "accuracy"), "gqa": ("write_shapes_gqa", 2000, 0.25, "accuracy")}


def run_demo(name: str, samples: int, nproc: int) -> None:
    from eve_operator.backends import local as lb
    from eve_operator.cli.cmd_submit import submit
    from eve_operator.cli.output import Format

    try:
        from eve_trainer.data import synth
    except ImportError as err:
        fail(f"the data pipeline is not installed ({err}); run `make demo`, which installs it")
    name = name or time.strftime("demo-%Y%m%d-%H%M%S")
    store = lb.default_output()
    root = Path(store.removeprefix("file://"))
    sets = {("caption", 0, samples): f"{store}/datasets/shapes-captions",
            ("conversation", 1, samples): f"{store}/datasets/shapes-conversations",
            ("caption", 2, 64): f"{store}/datasets/shapes-captions-heldout",
            ("conversation", 3, 64): f"{store}/datasets/shapes-conversations-heldout"}
    for (kind, seed, n), url in sets.items():
        synth.write_synthetic_dataset(url, num_samples=n, kind=kind, seed=seed, profile="shapes",
                                      image_size=IMAGE_SIZE, samples_per_shard=500)
        info(f"synthetic {kind} dataset: {url} ({n} samples, seed {seed})")
    benches = {}
    for bench, (writer, seed, chance, _) in BENCHES.items():
        benches[bench] = root / "datasets" / f"shapes-{bench}"
        made = getattr(synth, writer)(str(benches[bench]), num_images=BENCH_IMAGES, seed=seed, image_size=IMAGE_SIZE)
        info(f"held-out benchmark in {bench.upper()}'s format: {benches[bench]} ({made['questions']} questions "
             f"about {made['images']} unseen images; chance is {100 * chance:.0f} %)")
    captions, convs, held_caps, held_convs = sets.values()

    t0 = time.monotonic()
    initial = root / "datasets" / "initial-model"
    initial_scores = _score_initial(initial, benches)
    initial_s = time.monotonic() - t0

    words = ["stage=prealign", f"name={name}", f"data={captions}", f"sft.data={convs}", f"nproc_per_node={nproc}",
             *DEMO_OVERRIDES, f"validation.data=[{held_caps}]", f"sft.validation.data=[{held_convs}]",
             "validation.max_samples=32", *(f"eval.data.{b}={folder}" for b, folder in benches.items()),
             *(f"eval.{w}" for w in EVAL_WORDS)]
    try:
        submit(words, file=None, local=True, backend="", namespace=None, dry_run=False, detach=False, wait=False,
               output_fmt=Format.table)
    except typer.Exit as stop:
        if stop.exit_code:
            raise
    record = lb.load(name)
    evals = record.status.evals if record is not None else []
    if not evals or evals[-1].state != "Succeeded":
        fail("the pipeline ended without scores for the sft export", 1)
    trained = evals[-1]
    pipeline_eval_s = (trained.finished_at or 0) - (trained.started_at or 0)
    _print_comparison(initial_scores, trained.scores, initial_s, pipeline_eval_s)


def _score_initial(folder: Path, benches: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """The trainer's random initialisation as an export, scored by eve-eval (processes of their own)."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(var, None)
    info("scoring the initial model (random initialisation, as the trainer draws it) on the benchmarks")
    steps = [[sys.executable, "-m", "eve_trainer.initial_export", str(folder)],
             [sys.executable, "-m", "eve_trainer.evaluation", str(folder), f"bench={','.join(benches)}",
              *(f"{b}.data={path}" for b, path in benches.items()), *EVAL_WORDS, "mlflow=false",
              f"output={folder / 'eval'}"]]
    for command in steps:
        if subprocess.run(command, env=env, stdout=subprocess.DEVNULL).returncode != 0:
            fail(f"`{' '.join(command[1:4])} ...` failed (see above)", 1)
    return {b: json.loads((folder / "eval" / b / "scores.json").read_text())["scores"] for b in benches}


def _print_comparison(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]], initial_s: float,
                      pipeline_eval_s: float) -> None:
    print(f"\nheld-out benchmarks ({BENCH_IMAGES} unseen shapes images each; docs/eval.md):")
    print(f"  {'benchmark':<40} {'chance':>7} {'initial':>8} {'trained':>8}")
    what = {"pope": "POPE format, yes/no", "gqa": "GQA format, colour"}
    for bench, (_, _, chance, metric) in BENCHES.items():
        b, a = before.get(bench, {}), after.get(bench, {})
        label = f"{what[bench]} ({int(a.get('n', b.get('n', 0)))} q., {metric})"
        print(f"  {label:<40} {100 * chance:6.1f}% {100 * b.get(metric, 0):7.1f}% {100 * a.get(metric, 0):7.1f}%")
    print('  POPE: "Is there a red circle in the image?"; GQA: "What color is the square?" (exact match)')
    if "pope" in after:
        print(f"  POPE yes-ratio: initial {before.get('pope', {}).get('yes_ratio', 0):.2f}, "
              f"trained {after['pope'].get('yes_ratio', 0):.2f} (0.50 is balanced)")
    print(f"evaluation added {initial_s + pipeline_eval_s:.0f} s: the initial model {initial_s:.0f} s "
          f"(export + eve-eval), the sft export {pipeline_eval_s:.0f} s (the pipeline's eval job)")


__all__ = ["run_demo", "DEMO_OVERRIDES", "BENCHES"]

"""`eve-platform demo` (`make demo`): the tiny EVE chain learns something you can see, on this machine.

1. Synthetic data that can be learnt (`data synth --profile shapes`): a coloured shape per image;
   captions say what and where ("A red circle on the left.");
   the SFT conversations ask about them ("Is there a red circle in the image?" yes/no, "What color is
   the square?"). Held-out samples of the same kind for the validation loss of every stage, and a
   held-out yes/no benchmark in POPE's format (`write_shapes_pope`: unseen images, half yes, half no).
2. The initial model (the trainer's random initialisation, `eve_trainer.initial_export`) is scored on
   that benchmark with `eve-eval`: about 50 %, chance.
3. prealign -> pretrain -> sft, longer than the tiny recipe (DEMO_OVERRIDES), with validation; the
   pipeline itself scores the sft export on the benchmark (spec.eval: an eve-eval job after sft).
4. Both scores side by side, against chance, and the seconds evaluation added.

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
BENCH_IMAGES, BENCH_SEED = 50, 1000  # 200 questions: 2 categories x (1 yes + 1 no) per image


def run_demo(name: str, samples: int, nproc: int) -> None:
    from eve_operator.backends import local as lb
    from eve_operator.cli.cmd_submit import submit
    from eve_operator.cli.output import Format

    try:
        from eve_trainer.data.synth import write_shapes_pope, write_synthetic_dataset
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
        write_synthetic_dataset(url, num_samples=n, kind=kind, seed=seed, profile="shapes", image_size=IMAGE_SIZE,
                                samples_per_shard=500)
        info(f"synthetic {kind} dataset: {url} ({n} samples, seed {seed})")
    bench = root / "datasets" / "shapes-pope"
    made = write_shapes_pope(str(bench), num_images=BENCH_IMAGES, seed=BENCH_SEED, image_size=IMAGE_SIZE)
    info(f"held-out benchmark (POPE format): {bench} ({made['questions']} yes/no questions about "
         f"{made['images']} unseen images; chance is 50 %)")
    captions, convs, held_caps, held_convs = sets.values()

    t0 = time.monotonic()
    initial = root / "datasets" / "initial-model"
    initial_scores = _score_initial(initial, bench)
    initial_s = time.monotonic() - t0

    words = ["stage=prealign", f"name={name}", f"data={captions}", f"sft.data={convs}", f"nproc_per_node={nproc}",
             *DEMO_OVERRIDES, f"validation.data=[{held_caps}]", f"sft.validation.data=[{held_convs}]",
             "validation.max_samples=32", f"eval.data.pope={bench}", *(f"eval.{w}" for w in EVAL_WORDS)]
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
    seen = {"initial": colour_named(initial / "eval" / "pope" / "answers.jsonl", bench),
            "trained": colour_named(root / name / "sft" / "eval" / "pope" / "answers.jsonl", bench)}
    _print_comparison(initial_scores, trained.scores.get("pope", {}), initial_s, pipeline_eval_s, seen)


def colour_named(answers: Path, bench: Path) -> float:
    """The share of answers that name the colour of the shape in their image (the word after the
    first "A"/"a": the trained model describes the image before it says yes or no)."""
    from eve_trainer.data.synth import SHAPE_COLORS

    truth: dict[str, str] = {}
    for path in sorted((bench / "annotations").glob("*.json")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row["label"] == "yes":  # "Is there a <color> <shape> in the image?"
                truth[row["image"]] = row["text"].split()[3]
    image_of = {q["question_id"]: q["image"] for q in map(json.loads, (bench / "questions.jsonl").read_text().splitlines())}
    rows = [json.loads(line) for line in answers.read_text().splitlines()]
    right = 0
    for row in rows:
        words = [w.strip(".,").lower() for w in row["text"].split()]
        named = next((w for w in words if w in SHAPE_COLORS), None)
        right += named == truth.get(image_of[row["question_id"]])
    return right / max(len(rows), 1)


def _score_initial(folder: Path, bench: Path) -> dict[str, Any]:
    """The trainer's random initialisation as an export, scored by eve-eval (processes of their own)."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(var, None)
    info("scoring the initial model (random initialisation, as the trainer draws it) on the benchmark")
    steps = [[sys.executable, "-m", "eve_trainer.initial_export", str(folder)],
             [sys.executable, "-m", "eve_trainer.evaluation", str(folder), "bench=pope", f"pope.data={bench}",
              *EVAL_WORDS, "mlflow=false", f"output={folder / 'eval'}"]]
    for command in steps:
        if subprocess.run(command, env=env, stdout=subprocess.DEVNULL).returncode != 0:
            fail(f"`{' '.join(command[1:4])} ...` failed (see above)", 1)
    return json.loads((folder / "eval" / "pope" / "scores.json").read_text())["scores"]


def _print_comparison(before: dict[str, Any], after: dict[str, Any], initial_s: float, pipeline_eval_s: float,
                      seen: dict[str, float]) -> None:
    def row(label: str, s: dict[str, Any]) -> str:
        return (f"  {label:<34} {100 * s.get('accuracy', 0):5.1f} %   {100 * s.get('f1', 0):5.1f} %   "
                f"{s.get('yes_ratio', 0):.2f}")

    n = int(after.get("n", before.get("n", 0)))
    print(f"\nPOPE-style benchmark: {n} yes/no questions about {BENCH_IMAGES} held-out shapes images "
          "(\"Is there a red circle in the image?\"), half yes, half no")
    print(f"  {'model':<34} accuracy   F1        yes-ratio")
    print(f"  {'chance':<34}  50.0 %    -         -")
    print(row("initial (random initialisation)", before))
    print(row("trained (prealign->pretrain->sft)", after))
    print(f"answers that name the colour of the shape in the image: initial {100 * seen['initial']:.0f} %, "
          f"trained {100 * seen['trained']:.0f} % (chance 25 %)")
    print(f"evaluation added {initial_s + pipeline_eval_s:.0f} s: the initial model {initial_s:.0f} s "
          f"(export + eve-eval), the sft export {pipeline_eval_s:.0f} s (the pipeline's eval job)")


__all__ = ["run_demo", "DEMO_OVERRIDES"]

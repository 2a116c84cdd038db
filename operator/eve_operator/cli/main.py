"""`eve-platform`: submit and watch EVE training pipelines, on a cluster or on this machine.

Exit codes: 0 ok, 1 the pipeline failed (when waiting), 2 bad input, 3 not found,
4 the backend is unreachable, 130 interrupted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

# isort: off
from eve_operator.cli import cmd_submit  # noqa: F401 - registers submit first (the --help order)
from eve_operator.cli import cmd_pipelines  # noqa: F401 - list, status, describe, logs, cancel
from eve_operator.cli import cmd_eval  # noqa: F401 - eval
# isort: on
from eve_operator.cli import output
from eve_operator.cli.cmd_submit import pipeline_exit_code, submit
from eve_operator.cli.common import BackendOpt, LocalOpt, app, config_app, fail, info, pick_backend
from eve_operator.cli.output import Format

try:  # the data verbs (convert, convert-bench, synth, info) live beside the data pipeline
    from eve_operator.cli.cmd_data import data_app

    app.add_typer(data_app, name="data")
except ImportError:  # pragma: no cover - only while the data module is absent
    pass


# -- config ------------------------------------------------------------------------------------


@config_app.command("keys")
def config_keys_cmd() -> None:
    """Every key `submit` accepts: pipeline keys, then trainer keys."""
    from eve_operator.cli.submit_args import EVAL_KEYS, PIPELINE_KEYS
    from eve_trainer.config import config_keys

    print("# pipeline keys")
    for key, path in sorted(PIPELINE_KEYS.items()):
        print(f"{key:<20} -> spec.{path}")
    print("name                 pipeline name (default the preset's: eve-tiny, eve-7b, ...)")
    print(f"{'eval.data.<bench>':<20} -> spec.eval.data (benchmark -> bench folder URL; docs/operator.md)")
    for key in EVAL_KEYS:
        print(f"{'eval.' + key:<20} -> spec.eval.{key}")
    print("\n# trainer keys (prefix with a stage to set it for one stage: sft.optim.lr=1e-5)")
    for key in config_keys():
        print(key)


@config_app.command("show", context_settings={"ignore_unknown_options": True})
def config_show(words: Optional[list[str]] = typer.Argument(None, metavar="stage=<name> [key=value ...]"),
                file: Optional[Path] = typer.Option(None, "--file", "-f",
                                                    help="An EvePipeline manifest (or its spec), as for submit."),
                stage: Optional[str] = typer.Option(None, "--stage",
                                                    help="Which stage of the pipeline (default: its first)."),
                local: bool = LocalOpt, backend: str = BackendOpt,
                output_fmt: Format = typer.Option(Format.yaml, "--output", "-o")) -> None:
    """The resolved trainer config of one stage, exactly as `submit` with the same words hands it to
    the stage's ranks (recipe + overrides + the pipeline's keys; stage-prefixed keys included)."""
    from eve_contract import resolved_config
    from eve_contract.naming import default_pipeline_name
    from eve_operator.cli.cmd_submit import _local_defaults
    from eve_operator.cli.submit_args import load_pipeline_file, parse_submit
    from eve_operator.jobspec import build_job_spec
    from eve_operator.pipeline import SubmitJob
    from eve_trainer.config import ConfigError

    try:
        file_name, _, base = load_pipeline_file(file) if file is not None else (None, None, None)
        defaults = _local_defaults() if pick_backend(backend, local) == "local" else {}
        name, spec = parse_submit(words or [], defaults, base)
        name = name or file_name or default_pipeline_name(spec.preset)
        which = stage or spec.chain()[0]
        if which not in spec.chain():
            fail(f"--stage {which}: this pipeline runs {' -> '.join(spec.chain())}")
        # the stage job's own document (what its ranks read), checked as submit checks it
        # (a tokenizer or teacher that submit would refuse is shown as a note beside the config)
        job = build_job_spec(name, spec, SubmitJob(which, 1, f"{name}-{which}",
                                                   spec.planned_init_from(name, which), None), check_model=False)
    except (ConfigError, ValueError) as err:
        fail(str(err))
    cfg = resolved_config.loads(job.env[resolved_config.ENV_VAR])[1]
    output.emit(cfg, output_fmt if output_fmt is not Format.table else Format.yaml)
    if output_fmt is not Format.json:  # what it trains, as YAML comments (stderr)
        from eve_operator.cli.training_block import comment_for_config
        from eve_trainer.config import TrainConfig

        info(comment_for_config(TrainConfig.model_validate(cfg)))


# -- demo ----------------------------------------------------------------------------------


@app.command()
def demo(name: str = typer.Option("", help="Pipeline name; default demo-<date>-<time>, a fresh run each time."),
         samples: int = typer.Option(1500, help="Synthetic training samples per dataset."),
         nproc: int = typer.Option(2, help="Processes (ranks) per stage.")) -> None:
    """The tiny EVE chain learns something you can see: learnable synthetic data, prealign -> pretrain
    -> sft on this machine, and the initial and trained models scored on held-out yes/no questions."""
    from eve_operator.cli.demo import run_demo

    run_demo(name, samples, nproc)


def main() -> None:  # pragma: no cover - console entry
    app()


__all__ = ["app", "main", "pipeline_exit_code", "submit"]


if __name__ == "__main__":  # pragma: no cover
    main()

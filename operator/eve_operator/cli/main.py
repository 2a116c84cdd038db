"""`eve-platform`: submit and watch EVE training pipelines, on a cluster or on this machine.

Exit codes: 0 ok, 1 the pipeline failed (when waiting), 2 bad input, 3 not found,
4 the backend is unreachable, 130 interrupted.
"""

from __future__ import annotations

import time

import typer

# isort: off
from eve_operator.cli import cmd_submit  # noqa: F401 - registers submit first (the --help order)
from eve_operator.cli import cmd_pipelines  # noqa: F401 - list, status, describe, logs, cancel
# isort: on
from eve_operator.cli import output
from eve_operator.cli.cmd_submit import pipeline_exit_code, submit
from eve_operator.cli.common import app, config_app, fail, info
from eve_operator.cli.output import Format

try:  # the data verbs (convert, synth) live beside the data pipeline
    from eve_operator.cli.cmd_data import data_app

    app.add_typer(data_app, name="data")
except ImportError:  # pragma: no cover - only while the data module is absent
    pass


# -- config ------------------------------------------------------------------------------------


@config_app.command("keys")
def config_keys_cmd() -> None:
    """Every key `submit` accepts: pipeline keys, then trainer keys."""
    from eve_operator.cli.submit_args import PIPELINE_KEYS
    from eve_trainer.config import config_keys

    print("# pipeline keys")
    for key, path in sorted(PIPELINE_KEYS.items()):
        print(f"{key:<20} -> spec.{path}")
    print("name                 pipeline name (default eve-<preset>)")
    print("\n# trainer keys (prefix with a stage to set it for one stage: sft.optim.lr=1e-5)")
    for key in config_keys():
        print(key)


@config_app.command("show")
def config_show(words: list[str] = typer.Argument(..., metavar="stage=<name> [key=value ...]"),
                output_fmt: Format = typer.Option(Format.yaml, "--output", "-o")) -> None:
    """The resolved trainer config of one stage (recipe + overrides)."""
    from eve_trainer.config import ConfigError, resolve

    pairs = [w for w in words if not w.startswith(("stage=", "preset="))]
    kv = dict(w.split("=", 1) for w in words if w.startswith(("stage=", "preset=")))
    if "stage" not in kv:
        fail("missing stage=<name>")
    try:
        cfg = resolve(kv["stage"], kv.get("preset", "tiny"), pairs)
    except ConfigError as err:
        fail(str(err))
    output.emit(cfg.model_dump(mode="json"), output_fmt if output_fmt is not Format.table else Format.yaml)


# -- demo ----------------------------------------------------------------------------------


@app.command()
def demo(name: str = typer.Option("", help="Pipeline name; default demo-<date>-<time>, a fresh run each time."),
         samples: int = typer.Option(96, help="Synthetic samples per dataset."),
         nproc: int = typer.Option(2, help="Processes (ranks) per stage.")) -> None:
    """Synthetic data + the tiny EVE pipeline (prealign -> pretrain -> sft) on this machine."""
    from eve_operator.backends import local as lb

    name = name or time.strftime("demo-%Y%m%d-%H%M%S")
    store = lb.default_output()
    captions, convs = f"{store}/datasets/synth-captions", f"{store}/datasets/synth-conversations"
    try:
        from eve_trainer.data import write_synthetic_dataset
    except ImportError as err:
        fail(f"the data pipeline is not installed ({err}); run `make demo`, which installs it")
    for url, kind in ((captions, "caption"), (convs, "conversation")):
        index = write_synthetic_dataset(url, num_samples=samples, kind=kind, seed=0)
        info(f"synthetic {kind} dataset: {url} ({getattr(index, 'num_samples', samples)} samples)")
    submit(["stage=prealign", f"name={name}", f"data={captions}", f"sft.data={convs}",
            f"nproc_per_node={nproc}"], local=True, backend="", namespace=None, dry_run=False,
           detach=False, wait=False, output_fmt=Format.table)


def main() -> None:  # pragma: no cover - console entry
    app()


__all__ = ["app", "main", "pipeline_exit_code", "submit"]


if __name__ == "__main__":  # pragma: no cover
    main()

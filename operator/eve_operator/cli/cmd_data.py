"""`eve-platform data ...`: convert datasets to WebDataset shards, write synthetic data, inspect.

The work lives in eve_trainer.data (torch-free modules), imported inside the commands so
`eve-platform --help` stays fast. User mistakes (bad path, missing bucket, wrong
credentials) end with one line on stderr and exit code 2, never a stack trace.
"""

from __future__ import annotations

import json
import re
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from eve_contract.exit_codes import EXIT_USER
from eve_operator.cli.common import info

data_app = typer.Typer(help="Datasets: convert to WebDataset shards on S3 or disk, synthesise demo data.",
                       no_args_is_help=True)


class Out(str, Enum):
    table = "table"
    json = "json"


#: The options every data verb shares, declared once.
EndpointOpt = Annotated[Optional[str], typer.Option("--endpoint-url", envvar="EVE_S3_ENDPOINT",
                                                    help="S3 endpoint (SeaweedFS/MinIO); default AWS.")]
OutOpt = Annotated[Out, typer.Option("-o", "--output-format", help="table | json")]
ShardSizeOpt = Annotated[str, typer.Option("--shard-size", help="Target shard size, e.g. 256MB, 1GiB.")]


class Profile(str, Enum):
    demo = "demo"
    eve = "eve"
    shapes = "shapes"


class Kind(str, Enum):
    caption = "caption"
    conversation = "conversation"


def _size(text: str) -> int:
    """'256MB', '64MiB', '1G', '1048576' -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)(i?[bB])?\s*", text)
    if not m:
        raise typer.BadParameter(f"{text!r} is not a size such as 256MB or 1GiB")
    return int(float(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()])


def _fail(message: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_USER)


#: Module -> the distribution that provides it (the `data` extra: pip install 'eve-platform[data]').
_DATA_MODULES = {"PIL": "Pillow", "numpy": "numpy", "webdataset": "webdataset"}


def _require(verb: str, *modules: str) -> None:
    """A plain `pip install eve-platform` has no image libraries: say which extra to install."""
    import importlib.util

    missing = [_DATA_MODULES[m] for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        names = ", ".join(missing[:-1]) + (" and " if len(missing) > 1 else "") + missing[-1]
        _fail(f"`eve-platform data {verb}` needs {names}, which a plain install does not "
              "include: pip install 'eve-platform[data]' (the trainer's [train] extra has them too)")


def _user_errors():  # noqa: ANN202
    from eve_contract.storage import StorageError
    from eve_trainer.data.errors import DataError

    return (DataError, StorageError, FileNotFoundError, PermissionError)


def _emit(data: dict[str, Any], out: Out, title: str) -> None:
    if out is Out.json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    for key, value in data.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
        elif isinstance(value, list):
            value = "\n".join(map(str, value)) or "-"
        table.add_row(key, str(value))
    Console().print(table)


@data_app.command("convert")
def convert_cmd(
    source: Path = typer.Argument(..., help="LLaVA-style JSON (llava_v1_5_mix665k.json format) or a "
                                            "captions file (.jsonl or .csv: image path + caption)."),
    output: str = typer.Argument(..., help="Dataset root to write: s3://bucket/prefix, file:///dir or a path."),
    images: Path = typer.Option(None, "--images", help="Image folder the records' paths are relative to "
                                                       "(default: the source file's folder)."),
    kind: Kind = typer.Option(None, "--kind", help="Input kind; default from the file: .json -> "
                                                   "conversation, .jsonl/.csv -> caption."),
    shard_size: ShardSizeOpt = "256MB",
    workers: int = typer.Option(4, "--workers", min=1, help="Parallel converter processes."),
    endpoint_url: EndpointOpt = None,
    out: OutOpt = Out.table,
) -> None:
    """Convert a dataset into WebDataset shards + index.json, skipping (and counting) bad records."""
    _require("convert", "PIL", "webdataset")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from eve_trainer.data.convert import convert

    with Progress(TextColumn("converting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  transient=True, disable=out is Out.json or not sys.stderr.isatty(),
                  console=__import__("rich.console").console.Console(stderr=True)) as bar:
        task = bar.add_task("convert", total=None)
        try:
            report = convert(source, output, images=images, kind=kind.value if kind else None,
                             shard_size=_size(shard_size), workers=workers, endpoint_url=endpoint_url,
                             progress=lambda done, total: bar.update(task, completed=done, total=total))
        except _user_errors() as err:
            _fail(str(err))
    _emit(report.to_json(), out, f"converted {source} -> {report.output}")


@data_app.command("synth")
def synth_cmd(
    output: str = typer.Argument(..., help="Dataset root to write: s3://bucket/prefix, file:///dir or a path."),
    num_samples: int = typer.Option(300, "--num-samples", min=1),
    kind: Kind = typer.Option(Kind.caption, "--kind", help="caption (stages 1-2) or conversation (sft)."),
    seed: int = typer.Option(0, "--seed"),
    image_size: str = typer.Option("64,256", "--image-size", help="min,max of the longest image side in px."),
    shard_size: ShardSizeOpt = "256MB",
    samples_per_shard: int = typer.Option(50, "--samples-per-shard", min=1),
    endpoint_url: EndpointOpt = None,
    out: OutOpt = Out.table,
    profile: Profile = typer.Option(Profile.demo, "--profile",
                                    help="demo (compact), eve (EVE-like aspect ratios and text lengths) or shapes "
                                         "(learnable: coloured shapes, captions and questions about them)."),
) -> None:
    """Write a small synthetic dataset (random images + captions or conversations) for demos and tests."""
    import time

    _require("synth", "PIL", "numpy", "webdataset")

    from eve_trainer.data.synth import write_synthetic_dataset

    try:
        lo, hi = (int(x) for x in image_size.split(","))
    except ValueError:
        raise typer.BadParameter(f"--image-size {image_size!r}: expected min,max such as 64,256") from None
    start = time.monotonic()
    try:
        index = write_synthetic_dataset(output, num_samples=num_samples, kind=kind.value, seed=seed,
                                        image_size=(lo, hi), endpoint_url=endpoint_url,
                                        samples_per_shard=samples_per_shard, shard_size=_size(shard_size),
                                        profile=profile.value)
    except _user_errors() as err:
        _fail(str(err))
    _emit({"output": index.url, "kind": index.kind, "samples": index.num_samples, "shards": len(index.shards),
           "bytes": index.total_bytes, "seconds": round(time.monotonic() - start, 2)}, out,
          f"synthetic dataset {index.url}")


@data_app.command("info")
def info_cmd(
    url: str = typer.Argument(..., help="Dataset root holding index.json."),
    endpoint_url: EndpointOpt = None,
    out: OutOpt = Out.table,
) -> None:
    """Show a dataset's index: shards, samples, bytes, converter skips."""
    from eve_contract.storage import open_store
    from eve_trainer.data.index import DatasetIndex

    try:
        store = open_store(url, endpoint_url=endpoint_url)
        if url.startswith("s3://"):
            store.check()
        index = DatasetIndex.read(store)
    except _user_errors() as err:
        _fail(str(err))
    data = index.to_json()
    if out is Out.table:
        data = {"url": index.url, "kind": index.kind, "samples": index.num_samples, "shards": len(index.shards),
                "bytes": index.total_bytes, "skipped": index.skipped}
    _emit(data, out, f"dataset {index.url}")


# -- data convert-bench ----------------------------------------------------------------------------------

@data_app.command("convert-bench")
def convert_bench_cmd(
    question_file: Path = typer.Argument(..., help="The reference's question file: .jsonl (question_id, image, "
                                                   "text), ScienceQA's .json or MMBench's .tsv."),
    output: str = typer.Argument(..., help="Bench folder to write: s3://bucket/prefix, file:///dir or a path."),
    images: Path = typer.Option(None, "--images", help="Image folder the questions' paths are relative to "
                                                       "(default: the question file's folder)."),
    annotations: Path = typer.Option(None, "--annotations", help="Folder of the scorer's files (docs/eval.md), "
                                                                 "copied to <output>/annotations/."),
    shard_size: ShardSizeOpt = "256MB",
    endpoint_url: EndpointOpt = None,
    out: OutOpt = Out.table,
) -> None:
    """A benchmark's question file and images -> a bench folder with shards, for `eve-platform eval`."""
    _require("convert-bench", "PIL", "webdataset")
    from eve_contract.storage import StorageError
    from eve_trainer.data.errors import DataError
    from eve_trainer.evaluation.convert import convert_bench
    from eve_trainer.evaluation.questions import BenchDataError

    def say(done: int, total: int) -> None:
        if done == total or done % 500 == 0:
            info(f"converting: {done}/{total} images")

    try:
        report = convert_bench(question_file, output, images=images, annotations=annotations,
                               shard_size=_size(shard_size), endpoint_url=endpoint_url, progress=say)
    except (BenchDataError, DataError, StorageError, FileNotFoundError, PermissionError) as err:
        _fail(str(err))
    _emit(report.to_json(), out, f"bench {question_file} -> {report.output}")

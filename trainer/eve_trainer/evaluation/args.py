"""`eve-eval <export URL | models:/name@alias> bench=pope,textvqa pope.data=<url> ... [key=value]`.

Every rank of an evaluation job runs this (rank and world from RANK / WORLD_SIZE, as eve-train;
on a cluster `eve-launch -- eve-eval ...` starts a node's ranks). Keys:

    bench=<a,b,...>        the benchmarks (eve_trainer.evaluation.BENCHES)
    <bench>.data=<url>     each one's bench folder (docs/eval.md)
    output=<url>           where answers and scores go (default: the export's sibling eval/)
    max_new_tokens=128  batch_size=8  dtype=float32|bfloat16|float16
    tracking_uri=<uri>     MLflow (default MLFLOW_TRACKING_URI); mlflow=false to skip
    endpoint_url=<url>  region=<name>   the S3 endpoint of the data, export and output
    model_id=<name>        the answer lines' model_id (default <pipeline>/<stage>)

torch-free: `eve-platform eval` parses the same words.

Exit codes: 0 done, 2 the user's to fix (unknown bench or key, missing file, malformed question
file, a model that is not an export, no bucket, access denied), 1 retryable (an outage, a lost peer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from eve_contract.exit_codes import EXIT_OK

KEYS = ("bench", "output", "max_new_tokens", "batch_size", "dtype", "tracking_uri", "mlflow", "endpoint_url",
        "region", "model_id")


class UsageError(ValueError):
    pass


@dataclass
class EvalArgs:
    model: str
    benches: dict[str, str]
    output: str
    options: dict[str, Any] = field(default_factory=dict)
    max_new_tokens: int = 128
    batch_size: int = 8


def _int(key: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise UsageError(f"{key}={value!r} is not an integer") from None
    if number < 1:
        raise UsageError(f"{key}={number}: must be >= 1")
    return number


def parse(argv: list[str]) -> EvalArgs:
    """`<model> key=value ...` -> EvalArgs; every mistake names the key and what is allowed."""
    from eve_trainer.evaluation.benches import BENCHES
    from eve_trainer.evaluation.paths import default_output

    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        raise SystemExit(EXIT_OK)
    positional = [a for a in argv if "=" not in a or a.startswith("models:/")]
    if len(positional) != 1:
        raise UsageError("expected one model (an export URL or models:/<name>@<alias>) and key=value pairs; "
                         f"got {positional or 'none'}")
    values: dict[str, str] = {}
    data: dict[str, str] = {}
    for word in argv:
        if word in positional:
            continue
        key, value = word.split("=", 1)
        if key.endswith(".data"):
            name = key[: -len(".data")]
            if name not in BENCHES:
                raise UsageError(f"{key}: {name!r} is not a benchmark; allowed: {', '.join(BENCHES)}")
            data[name] = value
        elif key in KEYS:
            values[key] = value
        else:
            raise UsageError(f"unknown key {key!r}; allowed: {', '.join(KEYS)} and <bench>.data")
    names = [b.strip() for b in values.get("bench", "").split(",") if b.strip()]
    if not names:
        raise UsageError(f"bench= is missing; e.g. bench=pope (allowed: {', '.join(BENCHES)})")
    for name in names:
        if name not in BENCHES:
            raise UsageError(f"bench={name!r} is not a benchmark; allowed: {', '.join(BENCHES)}")
        if name not in data:
            raise UsageError(f"bench {name} has no data: add {name}.data=<bench folder URL> (docs/eval.md)")
    unused = sorted(set(data) - set(names))
    if unused:
        raise UsageError(f"{unused[0]}.data is given but {unused[0]} is not in bench={','.join(names)}")
    model = positional[0]
    output = values.get("output")
    if not output:
        if model.startswith("models:/"):
            raise UsageError("output= is required with a models:/ reference (default: beside an export URL)")
        output = default_output(model)
    options: dict[str, Any] = {k: values[k] for k in ("endpoint_url", "region", "model_id", "tracking_uri")
                               if values.get(k)}
    if "dtype" in values:
        if values["dtype"] not in ("float32", "bfloat16", "float16"):
            raise UsageError(f"dtype={values['dtype']!r}; allowed: float32, bfloat16, float16")
        options["dtype"] = values["dtype"]
    if "mlflow" in values:
        if values["mlflow"].lower() not in ("true", "false"):
            raise UsageError(f"mlflow={values['mlflow']!r}; allowed: true, false")
        options["log_to_mlflow"] = values["mlflow"].lower() == "true"
    return EvalArgs(model, {n: data[n] for n in names}, output, options,
                    _int("max_new_tokens", values.get("max_new_tokens", "128")),
                    _int("batch_size", values.get("batch_size", "8")))

"""`eve-train <stage> [--config file.yaml] [--preset tiny] [key=value ...]`: every rank runs this.

Exit codes (the operator's retry policy depends on them):
    0    stage done (export + stage-complete written when checkpoint.export)
    2    user/config error before the first step (bad key, batch split, init checkpoint, unreachable S3)
    143  stopped by SIGTERM after a final checkpoint (retryable)
    1    any other failure (retryable)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from eve_trainer.config import (MODEL_PRESETS, STAGES, ConfigError, TrainConfig, _merge, check_key,
                                parse_overrides, resolve)
from eve_trainer.storage import StorageError, open_store

EXIT_OK, EXIT_FAILED, EXIT_USER, EXIT_SIGTERM = 0, 1, 2, 143


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="eve-train", description="Train one EVE stage on this rank (rank/world from RANK, WORLD_SIZE, ...).",
        epilog="Overrides are dotted config keys, e.g. optim.lr=1e-4 data.urls=[s3://bucket/ds] max_steps=100.")
    parser.add_argument("stage", help=f"one of {', '.join(STAGES)}")
    parser.add_argument("--config", type=Path, help="YAML file with config values (overrides win over it)")
    parser.add_argument("--preset", help=f"model preset whose recipe to start from: {', '.join(MODEL_PRESETS)} "
                        "(default: model.preset from the overrides/file, else tiny)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    # intermixed: `eve-train sft --config f.yaml optim.lr=1e-4` puts overrides after an option
    return parser.parse_intermixed_args(argv)


def load_config(args: argparse.Namespace) -> TrainConfig:
    """Recipe(stage, preset) < --config file < key=value overrides."""
    values: dict[str, Any] = {}
    if args.config is not None:
        import yaml

        try:
            loaded = yaml.safe_load(args.config.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"--config {args.config}: {err}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"--config {args.config}: expected a mapping of config keys")
        values = loaded
        values.pop("stage", None)  # the positional stage wins
        for key in _dotted_keys(values):
            check_key(key, f" in {args.config}")
    values = _merge(values, parse_overrides(args.overrides))
    preset = args.preset or values.get("model", {}).get("preset") or "tiny"
    return resolve(args.stage, preset, values)


def _dotted_keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            keys += _dotted_keys(value, f"{prefix}{key}.")
        else:
            keys.append(prefix + key)
    return keys


def check_stores(cfg: TrainConfig) -> None:
    """Reach every S3 location before any heavy work, so a typo is exit 2 naming the URL."""
    for key, url in [("output", cfg.output), *((f"data.urls[{i}]", u) for i, u in enumerate(cfg.data.urls))]:
        store = open_store(url, endpoint_url=cfg.storage.endpoint_url, region=cfg.storage.region)
        try:
            store.check()
        except StorageError as err:
            raise StorageError(f"{key}: {err}") from None


def _setup_logging(rank: int) -> None:
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, stream=sys.stderr,
                        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s")
    for noisy in ("DeepSpeed", "deepspeed", "torch.distributed", "urllib3", "botocore", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    from eve_trainer.distributed import DistInfo
    from eve_trainer.trainer import StopFlag

    stop = StopFlag.install()  # from the very start: a SIGTERM during startup still ends in 143
    trainer = None
    error = None  # the traceback, uploaded to the stage's MLflow run
    try:
        args = parse_args(argv)
        dist = DistInfo.from_env()
        _setup_logging(dist.rank)
        cfg = load_config(args)
        cfg.gradient_accumulation(dist.world_size)
        check_stores(cfg)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

        from eve_trainer.trainer import Trainer

        trainer = Trainer(cfg, dist, stop=stop)
        code = trainer.train()
        trainer = None if code == EXIT_OK else trainer
        return code
    except (ConfigError, StorageError, ValueError) as err:
        started = trainer is not None and trainer.started
        if not started and _is_user_error(err):
            error = f"eve-train: error: {err}\n"
            print(error, file=sys.stderr, end="")
            return EXIT_USER
        error = traceback.format_exc()
        print(error, file=sys.stderr, end="")
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except Exception:  # noqa: BLE001 - the exit code is the contract; the trace goes to the log
        error = traceback.format_exc()
        print(error, file=sys.stderr, end="")
        return EXIT_FAILED
    finally:
        if trainer is not None:
            trainer.close("KILLED" if stop.requested else "FAILED", error=error)
        _shutdown()


def _is_user_error(err: BaseException) -> bool:
    if isinstance(err, (ConfigError, StorageError)):
        return True
    try:
        from eve_trainer.data import DataError
    except ImportError:
        return False
    return isinstance(err, DataError)


def _shutdown() -> None:
    if "torch.distributed" not in sys.modules:
        return
    from eve_trainer.distributed import destroy_process_group

    try:
        destroy_process_group()
    except Exception:  # noqa: BLE001 - exiting anyway
        pass


if __name__ == "__main__":
    sys.exit(main())

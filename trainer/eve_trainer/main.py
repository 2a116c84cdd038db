"""`eve-train <stage> [--config file.yaml] [--preset tiny] [key=value ...]`: every rank runs this.

In a stage job the config comes resolved: the operator (or the local backend) puts the stage's
whole trainer config into EVE_TRAIN_CONFIG as JSON (eve_contract.resolved_config), so every value
reaches the rank as it was validated at submit. `key=value` on the command line (a run by hand)
is typed by its field, like the CLI's. `--print-config` prints the resolved config and exits.

Exit codes (the operator's retry policy depends on them; docs/trainer.md "Failure classes"):
    0    stage done (export + stage-complete written when checkpoint.export)
    2    the user's to fix, found before the first step: a bad key or value, a batch that does not
         split, a wrong init checkpoint, a malformed dataset, a missing bucket, denied access or
         missing credentials. Never retried.
    143  stopped by SIGTERM after a final checkpoint (retryable)
    1    any other failure (retryable): S3 or MLflow down, timeouts, 5xx, a collective timeout (a dead
         or hung peer), OOM. A store that does not answer at start-up is waited for first
         (storage.wait_s), then exit 1.
SIGUSR1 dumps every thread's Python stack to stderr (eve_trainer.heartbeat).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from eve_contract.dicts import deep_merge
from eve_contract.exit_codes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USER
from eve_contract.names import MODEL_PRESETS, STAGES
from eve_contract.storage import StorageAccessError, StorageError, StorageUnavailable, open_store
from eve_trainer.config import ConfigError, TrainConfig, check_key, parse_overrides, resolve

log = logging.getLogger("eve_trainer")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="eve-train", description="Train one EVE stage on this rank (rank/world from RANK, WORLD_SIZE, ...).",
        epilog="Overrides are dotted config keys, e.g. optim.lr=1e-4 data.urls=[s3://bucket/ds] max_steps=100.")
    parser.add_argument("stage", help=f"one of {', '.join(STAGES)}")
    parser.add_argument("--config", type=Path, help="YAML file with config values (overrides win over it)")
    parser.add_argument("--preset", help=f"model preset whose recipe to start from: {', '.join(MODEL_PRESETS)} "
                        "(default: model.preset from the overrides/file, else tiny)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as JSON and exit (nothing is loaded or trained)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    # intermixed: `eve-train sft --config f.yaml optim.lr=1e-4` puts overrides after an option
    return parser.parse_intermixed_args(argv)


def load_config(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> TrainConfig:
    """Recipe(stage, preset) < --config file < EVE_TRAIN_CONFIG (the resolved config of a stage
    job) < key=value overrides."""
    from eve_contract.resolved_config import ENV_VAR, ResolvedConfigError, from_env

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
    try:
        resolved = from_env(os.environ if environ is None else environ)
    except ResolvedConfigError as err:
        raise ConfigError(str(err)) from None
    if resolved is not None:
        stage, transported = resolved
        if stage != args.stage:
            raise ConfigError(f"{ENV_VAR} holds the config of stage {stage}, but this is stage {args.stage}")
        transported = dict(transported)
        transported.pop("stage", None)
        values = deep_merge(values, transported)
    values = deep_merge(values, parse_overrides(args.overrides))
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
    """Reach every S3 location before any heavy work: a missing bucket or denied access is
    StorageAccessError (exit 2) naming the key and URL; a store that does not answer is waited
    for up to storage.wait_s (an object store restarting), then StorageUnavailable (exit 1)."""
    for key, url in [("output", cfg.output), *((f"data.urls[{i}]", u) for i, u in enumerate(cfg.data.urls))]:
        try:
            store = open_store(url, endpoint_url=cfg.storage.endpoint_url, region=cfg.storage.region)
        except StorageAccessError as err:
            raise StorageAccessError(f"{key}: {err}") from None
        t0 = time.monotonic()
        delay = 1.0
        while True:
            try:
                store.check()
                break
            except StorageAccessError as err:
                raise StorageAccessError(f"{key}: {err}") from None
            except StorageUnavailable as err:
                waited = time.monotonic() - t0
                if waited + delay > cfg.storage.wait_s:
                    raise StorageUnavailable(f"{key}: {err}; gave up after {waited:.0f} s (storage.wait_s="
                                             f"{cfg.storage.wait_s:g}); the job is retried") from None
                log.warning("%s: waiting for %s (%.0f of %g s, storage.wait_s): %s", key, url, waited,
                            cfg.storage.wait_s, err)
                time.sleep(delay)
                delay = min(2 * delay, 10.0)


def _setup_logging(rank: int) -> None:
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, stream=sys.stderr,
                        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s")
    for noisy in ("DeepSpeed", "deepspeed", "torch.distributed", "urllib3", "botocore", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def print_config(args: argparse.Namespace) -> int:
    """`eve-train <stage> --print-config`: the config this rank would run with, as JSON."""
    import json

    try:
        cfg = load_config(args)
    except ConfigError as err:
        print(f"eve-train: error: {err}", file=sys.stderr)
        return EXIT_USER
    print(json.dumps(cfg.model_dump(mode="json"), indent=2, sort_keys=True, ensure_ascii=False))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    if "--print-config" in (sys.argv[1:] if argv is None else argv):  # before torch is imported
        return print_config(parse_args(argv))
    from eve_trainer.heartbeat import install_stack_dump

    # first, before the seconds of importing torch: SIGUSR1 writes every thread's stack to the
    # rank log (eve-launch sends it before SIGTERM; the local runner before a stall restart)
    install_stack_dump()
    from eve_trainer.distributed import DistInfo
    from eve_trainer.trainer import StopFlag

    # a collective that times out (dead peer) tears the process down (3: without the NCCL
    # communicator cleanup, which itself can hang); the default in torch >= 2.2, set for older ones
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "3")
    # start-up has nothing to save: SIGTERM ends it at once (143); the trainer arms the
    # checkpoint-on-SIGTERM handler once it has resumed (StopFlag.arm)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    stop = StopFlag()
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
    except (ConfigError, StorageAccessError, ValueError) as err:
        started = trainer is not None and trainer.started
        if not started and _is_user_error(err):
            error = f"eve-train: error: {err}\n"
            print(error, file=sys.stderr, end="")
            return EXIT_USER
        error = traceback.format_exc()
        print(error, file=sys.stderr, end="")
        return EXIT_FAILED
    except StorageError as err:  # transient: an outage, a timeout, 5xx; the job is retried
        print(f"eve-train: error (retryable): {err}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception:  # noqa: BLE001 - the exit code is the contract; the trace goes to the log
        error = traceback.format_exc()
        print(error, file=sys.stderr, end="")
        return EXIT_FAILED
    finally:
        if trainer is not None:
            trainer.close("KILLED" if stop.requested else "FAILED", error=error)
        _shutdown()


def _is_user_error(err: BaseException) -> bool:
    """Permanent (exit 2) before the first step; transient storage errors never are."""
    if isinstance(err, (ConfigError, StorageAccessError)):
        return True
    try:
        from eve_trainer.data import DataError
    except ImportError:
        return False
    return isinstance(err, DataError)


def _shutdown() -> None:
    from eve_trainer.distributed import shutdown_quietly

    shutdown_quietly()


if __name__ == "__main__":
    sys.exit(main())

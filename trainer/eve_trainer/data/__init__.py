"""The data pipeline: WebDataset shards streamed from S3 (or a directory), converters,
the tiny tokenizer, and a loader with exact mid-epoch resumption. See docs/data.md.

    from eve_trainer.data import load_tokenizer, build_loader, write_synthetic_dataset, DatasetIndex

Attributes are imported lazily, so torch-free users (the CLI's `data convert`/`data synth`)
never import torch through this package.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DataError", "DatasetIndex", "EveLoader", "build_loader", "load_tokenizer",
           "write_synthetic_dataset", "IMAGE_TOKEN_INDEX", "IGNORE_INDEX"]

_WHERE = {
    "DataError": "eve_trainer.data.errors",
    "DatasetIndex": "eve_trainer.data.index",
    "EveLoader": "eve_trainer.data.loader",
    "build_loader": "eve_trainer.data.loader",
    "load_tokenizer": "eve_trainer.data.tokenizer",
    "write_synthetic_dataset": "eve_trainer.data.synth",
    "IMAGE_TOKEN_INDEX": "eve_trainer.data.templates",
    "IGNORE_INDEX": "eve_trainer.data.templates",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'eve_trainer.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

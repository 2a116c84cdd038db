"""Shared fixtures of the data-pipeline tests: tokenizer, tiny processor, synthetic datasets."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.data_helpers import tiny_processor  # type: ignore[import-not-found]


@pytest.fixture(scope="session")
def tok():  # noqa: ANN201
    from eve_trainer.data import load_tokenizer

    return load_tokenizer("builtin:tiny")


@pytest.fixture(scope="session")
def proc():  # noqa: ANN201
    return tiny_processor()


def _synthetic(factory: pytest.TempPathFactory, kind: str, **kw: object) -> Path:
    from eve_trainer.data import write_synthetic_dataset

    root = factory.mktemp(f"{kind}-ds")
    write_synthetic_dataset(str(root), kind=kind, image_size=(24, 80), **kw)
    return root


@pytest.fixture(scope="session")
def caption_ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _synthetic(tmp_path_factory, "caption", num_samples=130, seed=3, samples_per_shard=20)


@pytest.fixture(scope="session")
def conv_ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _synthetic(tmp_path_factory, "conversation", num_samples=90, seed=4, samples_per_shard=16)

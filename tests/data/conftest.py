"""Shared fixtures of the data-pipeline tests: tokenizer, tiny processor, synthetic datasets."""

from __future__ import annotations

from pathlib import Path

import pytest
from data_helpers import tiny_processor  # type: ignore[import-not-found]


@pytest.fixture(scope="session")
def tok():  # noqa: ANN201
    from eve_trainer.data import load_tokenizer

    return load_tokenizer("builtin:tiny")


@pytest.fixture(scope="session")
def proc():  # noqa: ANN201
    return tiny_processor()


@pytest.fixture(scope="session")
def caption_ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from eve_trainer.data import write_synthetic_dataset

    root = tmp_path_factory.mktemp("caption-ds")
    write_synthetic_dataset(str(root), num_samples=130, kind="caption", seed=3, image_size=(24, 80),
                            samples_per_shard=20)
    return root


@pytest.fixture(scope="session")
def conv_ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from eve_trainer.data import write_synthetic_dataset

    root = tmp_path_factory.mktemp("conv-ds")
    write_synthetic_dataset(str(root), num_samples=90, kind="conversation", seed=4, image_size=(24, 80),
                            samples_per_shard=16)
    return root

"""Helpers of the data-pipeline tests (a unique module name: tests/ has no packages)."""

from __future__ import annotations


def tiny_processor():  # noqa: ANN201
    """eve_model's EveImageProcessor for the tiny preset (224 px / 112 px teacher)."""
    from eve_model import EveImageProcessor, get_preset

    return EveImageProcessor.from_config(get_preset("tiny"))


def data_cfg(urls: list[str], **kw):  # noqa: ANN201
    from eve_trainer.config import DataSection

    base = {"urls": urls, "num_workers": 0, "shuffle_buffer": 16, "max_length": 256}
    base.update(kw)
    return DataSection(**base)

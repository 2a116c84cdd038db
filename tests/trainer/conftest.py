"""Fixtures of the trainer tests: a bucket and a synthetic dataset in the session's S3."""

from __future__ import annotations

import pytest
from support.services import S3Server


@pytest.fixture(scope="module")
def e2e_bucket(s3_server: S3Server) -> str:
    return s3_server.make_bucket("trainer-e2e")


@pytest.fixture(scope="module")
def dataset_url(s3_server: S3Server, e2e_bucket: str) -> str:
    from eve_trainer.data import write_synthetic_dataset

    url = f"s3://{e2e_bucket}/data/caption"
    with pytest.MonkeyPatch.context() as env:  # credentials for this write only; ranks get them explicitly
        for key, value in s3_server.env().items():
            env.setenv(key, value)
        write_synthetic_dataset(url, num_samples=64, kind="caption", seed=0, endpoint_url=s3_server.endpoint_url)
    return url

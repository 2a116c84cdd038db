"""Streaming shards from the real S3 (SeaweedFS): a broken connection resumes at the byte offset."""

from __future__ import annotations

import os

from eve_contract.storage import open_store
from eve_trainer.data.shards import ShardWriter, iter_tar


def test_broken_connection_resumes_mid_shard(s3_env, bucket, tmp_path) -> None:  # noqa: ANN001
    local = open_store(str(tmp_path))
    writer = ShardWriter(local)
    samples = {f"{i:04d}": {"bin": os.urandom(200_000), "json": b"{}"} for i in range(16)}  # ~3 MB
    for key, parts in samples.items():
        writer.write(key, parts)
    (info,) = writer.close()
    store = open_store(f"s3://{bucket}/ds")
    store.upload_file(tmp_path / info.name, info.name)

    stream = store.open_read(info.name)
    stream.retry.base_delay_s = 0.01
    got = {}
    for i, sample in enumerate(iter_tar(stream)):
        got[sample.key] = sample.parts
        if i in (3, 9) and stream._body is not None:
            stream._body._raw_stream.close()  # the connection drops mid-object
    assert got == samples
    assert stream.reconnects >= 2

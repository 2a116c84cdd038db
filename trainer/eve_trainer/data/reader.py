"""Reading the positions of one slot range as a stream of entries, across shards.

An entry is a raw sample (tar parts + the byte offset of its first header) or a
placeholder for a position whose sample could not be read (truncated or short shard),
so positions - and therefore checkpointed cursors - stay exact whatever the data holds.
Streams come from `store.open_read(name, start=byte)`, which for S3 is the reconnecting
`ResumableS3Stream`: a resumed cursor costs one ranged GET, not a re-read of the shard.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from eve_trainer.data.plan import EpochLayout
from eve_trainer.data.shards import RawSample, ShardReadError, iter_tar

log = logging.getLogger("eve_trainer.data")


@dataclass
class Entry:
    pos: int
    shard: str
    """URL of the shard, for messages."""
    raw: RawSample | None
    reason: str = ""
    """Why raw is None (truncated_shard, missing_in_shard)."""

    @property
    def byte(self) -> int | None:
        return self.raw.offset if self.raw is not None else None


class Stores:
    """Dataset-root stores, opened lazily per process (boto3 clients must not cross fork)."""

    def __init__(self, urls: list[str], endpoint_url: str | None, region: str | None):
        self.urls, self.endpoint_url, self.region = urls, endpoint_url, region
        self._pid, self._stores = -1, {}

    def __getstate__(self) -> dict[str, Any]:
        return {"urls": self.urls, "endpoint_url": self.endpoint_url, "region": self.region}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["urls"], state["endpoint_url"], state["region"])

    def get(self, source: int) -> Any:
        from eve_contract.storage import open_store

        if self._pid != os.getpid():
            self._pid, self._stores = os.getpid(), {}
        if source not in self._stores:
            self._stores[source] = open_store(self.urls[source], endpoint_url=self.endpoint_url,
                                              region=self.region)
        return self._stores[source]


def iter_entries(stores: Stores, layout: EpochLayout, start: int, end: int,
                 start_byte: int | None = None) -> Iterator[Entry]:
    """Entries for positions [start, end) of `layout` (plan indices when the epoch is planned).
    `start_byte`, when known, is the byte offset of position `start` in its shard (from a
    checkpointed cursor). Indices that fall in one shard are read in one pass of it; gaps of
    a planned epoch are read past, not reopened."""
    pos = start
    byte = start_byte
    while pos < end:
        j, offset = layout.locate(pos)
        ref = layout.order[j]
        wanted = [offset]  # offsets in this shard of indices pos, pos+1, ... (increasing)
        while pos + len(wanted) < end and len(wanted) < ref.samples - offset:
            jj, off = layout.locate(pos + len(wanted))
            if jj != j:
                break
            wanted.append(off)
        take = len(wanted)
        store = stores.get(ref.source)
        url = f"{store.url}/{ref.name}"
        got = 0
        at = offset if byte is not None else 0  # shard offset of the next sample the stream gives
        reason = ""
        from eve_contract.storage import StorageError

        try:
            with closing(store.open_read(ref.name, start=byte or 0)) as stream:
                with closing(iter_tar(stream, start=byte or 0)) as samples:
                    for raw in samples:
                        at += 1
                        if at - 1 != wanted[got]:
                            continue
                        yield Entry(pos + got, url, raw)
                        got += 1
                        if got == take:
                            break
        except ShardReadError as err:
            reason = "truncated_shard"
            log.warning("%s: unreadable after %d samples of this range (%s); skipping the rest",
                        url, got, err)
        except FileNotFoundError:
            reason = "missing_shard"
            log.warning("%s: shard listed in index.json does not exist; skipping it", url)
        except StorageError:
            raise
        if got < take and not reason:
            reason = "missing_in_shard"
            log.warning("%s: holds fewer samples than index.json says; skipping %d positions",
                        url, take - got)
        for k in range(got, take):
            yield Entry(pos + k, url, None, reason)
        pos += take
        byte = None

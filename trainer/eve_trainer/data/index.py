"""`index.json`: the one small file per dataset that lists shards and sample counts.

Written by the converters last, so a dataset without an index is incomplete. The loader
plans epochs (rank/worker ranges, progress, `samples_per_epoch`) from it without listing
the bucket or opening a shard.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

INDEX_FILE = "index.json"
INDEX_VERSION = 1


@dataclass(frozen=True)
class ShardInfo:
    name: str
    """Object name relative to the dataset root, e.g. `shard-000000.tar`."""
    samples: int
    bytes: int


@dataclass
class DatasetIndex:
    shards: list[ShardInfo] = field(default_factory=list)
    kind: str = "caption"
    """caption | conversation | mixed: what the json of the samples holds."""
    url: str = ""
    """Where the index was read from or written to (not stored in the file)."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Converter skips by reason, for the record."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def total_bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    def to_json(self) -> dict[str, Any]:
        return {"version": INDEX_VERSION, "kind": self.kind, "num_samples": self.num_samples,
                "total_bytes": self.total_bytes, "shards": [asdict(s) for s in self.shards],
                "skipped": dict(self.skipped), **({"extra": self.extra} if self.extra else {})}

    @classmethod
    def from_json(cls, data: dict[str, Any], url: str = "") -> DatasetIndex:
        from eve_trainer.data.errors import DataError

        try:
            shards = [ShardInfo(str(s["name"]), int(s["samples"]), int(s.get("bytes", 0)))
                      for s in data["shards"]]
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"{url or 'index'}/{INDEX_FILE} is malformed ({err!r}); "
                            "re-run `eve-platform data convert`") from None
        return cls(shards=shards, kind=str(data.get("kind", "caption")), url=url,
                   skipped=dict(data.get("skipped", {})), extra=dict(data.get("extra", {})))

    def write(self, store: Any) -> None:
        """Write index.json to an ObjectStore (last step of a conversion)."""
        store.put_bytes(INDEX_FILE, json.dumps(self.to_json(), indent=1).encode())
        self.url = store.url

    @classmethod
    def read(cls, store: Any) -> DatasetIndex:
        from eve_trainer.data.errors import DataError

        try:
            raw = store.get_bytes(INDEX_FILE)
        except FileNotFoundError:
            raise DataError(f"{store.url}/{INDEX_FILE} not found: not a dataset root "
                            "(convert data with `eve-platform data convert`)") from None
        try:
            data = json.loads(raw)
        except ValueError as err:
            raise DataError(f"{store.url}/{INDEX_FILE} is not valid JSON ({err})") from None
        return cls.from_json(data, url=store.url)

"""WebDataset tar shards: a writer with size rollover and a streaming reader with offsets.

Shards are plain POSIX tars in WebDataset layout (`<key>.jpg`, `<key>.json` next to each
other), so `webdataset.WebDataset` reads them too. Our own reader exists because the
loader needs, for every sample, the byte offset of its first tar header: a checkpointed
position is "shard + byte offset", and resuming is one ranged GET from there instead of
re-reading the shard (webdataset itself cannot resume mid-shard).
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from eve_trainer.data.index import ShardInfo

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
READ_BUFFER = 1 << 20


def split_name(name: str) -> tuple[str, str]:
    """`dir/000123.seg.json` -> (`dir/000123`, `seg.json`), the WebDataset key rule."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), (ext.lower() if dot else "")


# ----------------------------------------------------------------------------------------


class ShardWriter:
    """Append samples; a new shard starts when the current one would pass `shard_size`
    bytes or `max_samples`. Each finished shard is uploaded (or moved) into `store` and
    recorded as a ShardInfo.

    Each shard is written by webdataset's TarWriter, with fixed headers (mtime 0, no user
    or group names, mode 0444) so the same input gives byte-identical shards. The rollover
    is ours, not `webdataset.ShardWriter`'s: that one rolls over after a shard has passed
    its size (counting payload only) and writes local files; ours keeps every shard within
    `shard_size` (headers included) and sends each finished shard to the store."""

    def __init__(self, store: Any, pattern: str = "shard-{:06d}.tar", shard_size: int = 256 << 20,
                 max_samples: int | None = None):
        self.store, self.pattern = store, pattern
        self.shard_size, self.max_samples = shard_size, max_samples
        self.index = 0
        self.shards: list[ShardInfo] = []
        self._tar: Any = None  # webdataset.TarWriter of the open shard
        self._path: Path | None = None
        self._count = 0
        self._local_root: Path | None = getattr(store, "root", None)

    def _open(self) -> None:
        import webdataset

        name = self.pattern.format(self.index)
        if self._local_root is not None:  # write in place, rename when complete
            self._path = self._local_root / (name + ".tmp")
            self._path.parent.mkdir(parents=True, exist_ok=True)
        else:
            fd, tmp = tempfile.mkstemp(suffix=".tar", prefix="eve-shard-")
            os.close(fd)
            self._path = Path(tmp)
        self._tar = webdataset.TarWriter(str(self._path), user="", group="", mtime=0, encoder=False)
        self._count = 0

    def write(self, key: str, parts: dict[str, bytes]) -> None:
        size = sum(512 + -(-len(v) // 512) * 512 for v in parts.values())
        if self._tar is not None and self._count and (
                self._tar.tarstream.offset + size > self.shard_size
                or (self.max_samples and self._count >= self.max_samples)):
            self.close_shard()
        if self._tar is None:
            self._open()
        self._tar.write({"__key__": key, **parts})
        self._count += 1

    def close_shard(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        assert self._path is not None
        name = self.pattern.format(self.index)
        nbytes = self._path.stat().st_size
        if self._local_root is not None:
            os.replace(self._path, self._local_root / name)
        else:
            try:
                self.store.upload_file(self._path, name)
            finally:
                self._path.unlink(missing_ok=True)
        self.shards.append(ShardInfo(name, self._count, nbytes))
        self._tar, self._path = None, None
        self.index += 1

    def close(self) -> list[ShardInfo]:
        self.close_shard()
        return self.shards


# ----------------------------------------------------------------------------------------


@dataclass
class RawSample:
    key: str
    parts: dict[str, bytes]
    offset: int
    """Absolute byte offset of the sample's first tar header in its shard."""


def _missing_object(err: BaseException) -> bool:
    while err is not None:
        code = getattr(err, "response", {}).get("Error", {}).get("Code") if hasattr(err, "response") else None
        if code in ("NoSuchKey", "404"):
            return True
        err = err.__cause__ or err.__context__
    return False


class ShardReadError(Exception):
    """The tar stream broke (truncated or corrupt); samples read so far were yielded."""


class _Raw(io.RawIOBase):
    """Adapts any `read(n)` stream (e.g. ResumableS3Stream) for io.BufferedReader."""

    def __init__(self, stream: IO[bytes]):
        self.stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # noqa: ANN001
        data = self.stream.read(len(buf))
        buf[: len(data)] = data
        return len(data)


def _octal(field: bytes) -> int:
    field = field.rstrip(b"\0 ").lstrip(b" ")
    if field and field[0] & 0x80:  # GNU base-256 for large sizes
        return int.from_bytes(field[1:], "big")
    return int(field or b"0", 8)


def _parse_header(block: bytes, offset: int) -> tuple[str, int, bytes]:
    """(name, size, typeflag) of a ustar/gnu header; checks the checksum."""
    stored = _octal(block[148:156])
    computed = sum(block[:148]) + 8 * 32 + sum(block[156:])
    if stored != computed:
        raise ShardReadError(f"bad tar header checksum at byte {offset}")
    name = block[0:100].split(b"\0", 1)[0]
    if block[257:262] == b"ustar" and block[345] != 0:
        name = block[345:500].split(b"\0", 1)[0] + b"/" + name
    return name.decode("utf-8", "replace"), _octal(block[124:136]), block[156:157]


def _pax_path(data: bytes) -> str | None:
    pos = 0
    while pos < len(data):
        length = int(data[pos:data.index(b" ", pos)])
        record = data[pos:pos + length]
        key, _, value = record[record.index(b" ") + 1:-1].partition(b"=")
        if key == b"path":
            return value.decode("utf-8", "replace")
        pos += length
    return None


def _read(reader: IO[bytes], n: int, name: str, offset: int) -> bytes:
    data = reader.read(n)
    if len(data) < n:
        raise ShardReadError(f"member {name} truncated at byte {offset + 512 + len(data)}")
    return data


def iter_tar(stream: IO[bytes], start: int = 0) -> Iterator[RawSample]:
    """Samples of a tar stream that begins at byte `start` of its shard (a header boundary).

    Consecutive members with the same key form one sample. A minimal strict tar parser
    (ustar, GNU long names, pax paths), because tarfile silently treats a truncated or
    corrupt header as the end of the archive. A broken stream raises ShardReadError
    after the complete samples before the break; the sample being assembled at that
    moment is dropped, never yielded half. A stream that ends without the end-of-archive
    zero block counts as truncated.
    """
    from eve_contract.storage import StorageError

    reader = io.BufferedReader(_Raw(stream), buffer_size=READ_BUFFER)
    offset = start
    current: RawSample | None = None
    long_name: str | None = None
    header_at: int | None = None
    try:
        while True:
            block = reader.read(512)
            if len(block) < 512:
                raise ShardReadError(f"truncated at byte {offset + len(block)} (no end-of-archive marker)")
            if block == bytes(512):
                break
            name, size, flag = _parse_header(block, offset)
            if header_at is None:
                header_at = offset
            padded = -(-size // 512) * 512
            if flag in (b"L", b"x"):
                data = _read(reader, padded, name, offset)[:size]
                offset += 512 + padded
                if flag == b"L":
                    long_name = data.rstrip(b"\0").decode("utf-8", "replace")
                else:
                    long_name = _pax_path(data) or long_name
                continue
            if long_name is not None:
                name, long_name = long_name, None
            member_at, header_at = header_at, None
            if flag not in (b"0", b"\0", b"7"):  # directories, links, global pax headers
                _read(reader, padded, name, offset)
                offset += 512 + padded
                continue
            key, ext = split_name(name)
            if current is not None and key != current.key:
                yield current  # complete: a new key starts
                current = None
            data = _read(reader, padded, name, offset)[:size]
            offset += 512 + padded
            if current is None:
                current = RawSample(key, {}, member_at)
            current.parts[ext] = data
    except (StorageError, FileNotFoundError, ShardReadError):
        raise
    except (EOFError, OSError, ValueError) as err:
        if _missing_object(err):
            raise FileNotFoundError(str(err)) from err
        raise ShardReadError(str(err) or type(err).__name__) from err
    except Exception as err:
        if _missing_object(err):  # botocore NoSuchKey
            raise FileNotFoundError(str(err)) from err
        raise
    if current is not None:
        yield current

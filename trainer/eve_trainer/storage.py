"""Object storage behind one small interface: S3 (boto3) or a local directory.

URLs: `s3://bucket/prefix`, `file:///abs/dir`, or a plain path. The S3 endpoint comes
from the argument, else `AWS_ENDPOINT_URL` / `EVE_S3_ENDPOINT`; credentials from the
standard boto3 chain. torch-free: the operator uses it to read manifests.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol
from urllib.parse import urlparse


class StorageError(RuntimeError):
    """The store could not be reached or used; the message names the URL."""


class ObjectStore(Protocol):
    url: str

    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str = "") -> list[str]: ...
    def size(self, key: str) -> int: ...
    def delete_prefix(self, prefix: str) -> int: ...
    def upload_file(self, path: str | Path, key: str) -> None: ...
    def download_file(self, key: str, path: str | Path) -> None: ...
    def open_read(self, key: str, start: int = 0) -> IO[bytes]: ...
    def child(self, prefix: str) -> ObjectStore: ...
    def check(self) -> None: ...


def join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def open_store(url: str, *, endpoint_url: str | None = None, region: str | None = None) -> ObjectStore:
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StorageError(f"{url!r} has no bucket; expected s3://bucket/prefix")
        return S3Store(parsed.netloc, parsed.path.strip("/"), endpoint_url=endpoint_url, region=region)
    if parsed.scheme in ("", "file"):
        path = parsed.path if parsed.scheme == "file" else url
        if parsed.scheme == "file" and parsed.netloc:  # file://./rel -> netloc '.'
            path = parsed.netloc + parsed.path
        return LocalStore(Path(path).expanduser())
    raise StorageError(f"unsupported storage URL {url!r}; use s3://bucket/prefix, file:///dir or a path")


# ----------------------------------------------------------------------------------------


class LocalStore:
    def __init__(self, root: Path):
        self.root = root.resolve()
        self.url = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        return self.root / key if key else self.root

    def put_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)  # atomic: a reader never sees half a file

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.url}/{key} does not exist") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix)
        if base.is_file():
            return [prefix]
        if not base.is_dir():
            return []
        return sorted(
            str(p.relative_to(self.root)) for p in base.rglob("*")
            if p.is_file() and not p.name.endswith(".tmp")
        )

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def delete_prefix(self, prefix: str) -> int:
        path = self._path(prefix)
        if path.is_file():
            path.unlink()
            return 1
        if not path.is_dir():
            return 0
        count = sum(1 for p in path.rglob("*") if p.is_file())
        shutil.rmtree(path, ignore_errors=True)
        return count

    def upload_file(self, path: str | Path, key: str) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.copyfile(path, tmp)
        os.replace(tmp, dest)

    def download_file(self, key: str, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self._path(key), path)

    def download_and_hash(self, key: str, path: str | Path) -> str:
        """download_file + the sha256 of the bytes, read once."""
        import hashlib

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        with open(self._path(key), "rb") as src, open(path, "wb") as dst:
            while block := src.read(8 << 20):
                h.update(block)
                dst.write(block)
        return h.hexdigest()

    def open_read(self, key: str, start: int = 0) -> IO[bytes]:
        f = open(self._path(key), "rb")  # noqa: SIM115 - caller closes
        if start:
            f.seek(start)
        return f

    def child(self, prefix: str) -> LocalStore:
        return LocalStore(self._path(prefix))

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StorageError(f"cannot use {self.url}: {err}") from None


# ----------------------------------------------------------------------------------------


@dataclass
class _Retry:
    attempts: int = 6
    base_delay_s: float = 0.25

    def sleep(self, attempt: int) -> None:
        time.sleep(min(self.base_delay_s * 2**attempt, 8.0))


_RETRYABLE_CODES = {"SlowDown", "503", "500", "RequestTimeout", "InternalError", "Throttling"}


def _client(endpoint_url: str | None, region: str | None):  # noqa: ANN202
    import boto3
    from botocore.config import Config

    endpoint = endpoint_url or os.environ.get("EVE_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
    config = Config(
        retries={"max_attempts": 8, "mode": "adaptive"},  # throttling (503 SlowDown) backs off
        connect_timeout=10, read_timeout=60, max_pool_connections=32,
        s3={"addressing_style": "path"} if endpoint else {},
    )
    return boto3.client("s3", endpoint_url=endpoint, region_name=region or os.environ.get("AWS_REGION") or "us-east-1",
                        config=config)


_CLIENTS: dict[tuple[str | None, str | None, int], object] = {}


class S3Store:
    """An S3 bucket prefix. Clients are cached per process (connection reuse)."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 region: str | None = None):
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.endpoint_url, self.region = endpoint_url, region
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        key = (endpoint_url, region, os.getpid())
        if key not in _CLIENTS:
            _CLIENTS[key] = _client(endpoint_url, region)
        self.client = _CLIENTS[key]

    def _key(self, key: str) -> str:
        return join(self.prefix, key)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def get_bytes(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as err:
            if err.response["Error"]["Code"] in ("NoSuchKey", "404"):
                raise FileNotFoundError(f"{self.url}/{key} does not exist") from None
            raise

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as err:
            if err.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def list(self, prefix: str = "") -> list[str]:
        full = self._key(prefix)
        paginator = self.client.get_paginator("list_objects_v2")
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        return sorted(keys)

    def size(self, key: str) -> int:
        return int(self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        for i in range(0, len(keys), 1000):
            batch = [{"Key": self._key(k)} for k in keys[i:i + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        return len(keys)

    def _transfer_config(self):  # noqa: ANN202
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(multipart_threshold=16 * 2**20, multipart_chunksize=16 * 2**20,
                              max_concurrency=16, use_threads=True)

    def upload_file(self, path: str | Path, key: str) -> None:
        self.client.upload_file(str(path), self.bucket, self._key(key), Config=self._transfer_config())

    def download_file(self, key: str, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.client.download_file(self.bucket, self._key(key), str(path), Config=self._transfer_config())

    def download_and_hash(self, key: str, path: str | Path, *, chunk: int = 16 << 20, workers: int = 8) -> str:
        """download_file + the sha256 of the bytes: ranged GETs in parallel, written in place,
        hashed in order as they arrive, so verifying costs no second read of the file."""
        import hashlib
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        size = self.size(key)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            def get(start: int) -> bytes:
                end = min(size, start + chunk) - 1
                data = self.client.get_object(Bucket=self.bucket, Key=self._key(key),
                                              Range=f"bytes={start}-{end}")["Body"].read()
                if len(data) != end - start + 1:
                    raise StorageError(f"{self.url}/{key}: short read at byte {start}")
                os.pwrite(fd, data, start)
                return data

            starts = iter(range(0, size, chunk))
            with ThreadPoolExecutor(max_workers=workers) as pool:
                window: deque = deque(pool.submit(get, s) for _, s in zip(range(2 * workers), starts))
                while window:  # a bounded window: memory stays at ~2 x workers chunks
                    h.update(window.popleft().result())
                    if (nxt := next(starts, None)) is not None:
                        window.append(pool.submit(get, nxt))
        finally:
            os.close(fd)
        return h.hexdigest()

    def open_read(self, key: str, start: int = 0) -> IO[bytes]:
        return ResumableS3Stream(self, key, start)

    def child(self, prefix: str) -> S3Store:
        return S3Store(self.bucket, join(self.prefix, prefix), endpoint_url=self.endpoint_url,
                       region=self.region)

    def check(self) -> None:
        """Fail early, naming the URL, when the bucket is missing or credentials are wrong."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as err:
            code = err.response["Error"]["Code"]
            what = {"404": "does not exist", "NoSuchBucket": "does not exist",
                    "403": "is not accessible with these credentials"}.get(code, f"failed ({code})")
            raise StorageError(f"bucket of {self.url} {what}") from None
        except BotoCoreError as err:
            raise StorageError(f"cannot reach {self.url} at {self.client.meta.endpoint_url}: {err}") from None


class ResumableS3Stream:
    """A read-only stream of one object that reconnects at the byte offset it reached
    when the connection breaks (reset, timeout, 5xx), with exponential backoff."""

    def __init__(self, store: S3Store, key: str, start: int = 0, retry: _Retry | None = None):
        self.store, self.key, self.pos = store, key, start
        self.retry = retry or _Retry()
        self.reconnects = 0
        self._body = None

    def _open(self) -> None:
        rng = {"Range": f"bytes={self.pos}-"} if self.pos else {}
        resp = self.store.client.get_object(Bucket=self.store.bucket, Key=self.store._key(self.key), **rng)
        self._body = resp["Body"]

    def read(self, n: int = -1) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        for attempt in range(self.retry.attempts):
            try:
                if self._body is None:
                    self._open()
                data = self._body.read(n) if n >= 0 else self._body.read()
                self.pos += len(data)
                return data
            except (BotoCoreError, ConnectionError, TimeoutError, OSError, ClientError) as err:
                if isinstance(err, ClientError) and err.response["Error"]["Code"] not in _RETRYABLE_CODES:
                    raise
                self._body = None
                self.reconnects += 1
                if attempt == self.retry.attempts - 1:
                    raise StorageError(f"reading {self.store.url}/{self.key} at byte {self.pos} failed: {err}") from err
                self.retry.sleep(attempt)
        raise AssertionError("unreachable")

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None

    def __enter__(self) -> ResumableS3Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(1 << 20):
            yield chunk

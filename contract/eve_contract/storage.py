"""Object storage behind one small interface: S3 (boto3) or a local directory.

URLs: `s3://bucket/prefix`, `file:///abs/dir`, or a plain path. The S3 endpoint comes
from the argument, else `AWS_ENDPOINT_URL` / `EVE_S3_ENDPOINT`; credentials from the
standard boto3 chain. torch-free: the operator uses it to read manifests.

Failure classes (docs/trainer.md "Failure classes"): every S3 error leaves this module as
- `StorageAccessError`: the user must change something (bucket missing, access denied or
  403, wrong or missing credentials, a malformed URL). Permanent: eve-train exits 2.
- `StorageUnavailable`: the world's fault (connection refused or reset, timeouts, 5xx,
  throttling). Transient: retried here, then eve-train exits 1 and the job is retried.
- `FileNotFoundError` for a missing key.
`StorageError` is the base of both; a bare one counts as transient.

One client policy (`s3_client`) for the trainer and the operator: connect timeout 5 s, read
timeout 20 s (a black-holed connection costs one read timeout, then the read resumes at the
byte it reached), botocore "standard" retries (5 attempts with jittered backoff) for
connection errors, 5xx and throttling.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import urlparse

log = logging.getLogger("eve_contract.storage")


class StorageError(RuntimeError):
    """The store could not be reached or used; the message names the URL. Transient unless
    it is a StorageAccessError."""


class StorageUnavailable(StorageError):
    """Transient: the store did not answer, timed out, or answered 5xx/throttling. Retry."""


class StorageAccessError(StorageError):
    """Permanent: no bucket, access denied, wrong or missing credentials, bad URL. The user
    must fix it; retrying cannot help."""


#: S3 error codes that only the user can fix
PERMANENT_CODES = frozenset({
    "NoSuchBucket", "AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch",
    "AllAccessDisabled", "AccountProblem", "InvalidBucketName", "NotSignedUp", "InvalidSecurity",
    "AuthorizationHeaderMalformed", "InvalidToken", "MissingSecurityHeader"})
_HINTS = {"NoSuchBucket": "the bucket does not exist", "InvalidBucketName": "the bucket name is invalid",
          "InvalidAccessKeyId": "the access key id is not known to this store (check AWS_ACCESS_KEY_ID)",
          "SignatureDoesNotMatch": "the secret key is wrong (check AWS_SECRET_ACCESS_KEY)"}


def classify(err: BaseException, url: str) -> BaseException:
    """A botocore/boto3 error as StorageAccessError (permanent), StorageUnavailable (transient)
    or FileNotFoundError (missing key); anything else is returned unchanged."""
    try:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            NoCredentialsError,
            ParamValidationError,
            PartialCredentialsError,
        )
    except ImportError:  # pragma: no cover
        return err
    if isinstance(err, StorageError | FileNotFoundError):
        return err
    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", ""))
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("NoSuchKey", "404", "NotFound"):
            return FileNotFoundError(f"{url} does not exist")
        if code in PERMANENT_CODES or status == 403:
            hint = _HINTS.get(code, "access denied with these credentials" if status == 403 or code in
                              ("AccessDenied", "403") else code)
            return StorageAccessError(f"{url}: {hint} ({code or status})")
        return StorageUnavailable(f"{url}: the store answered {code or status}: {err}")
    if isinstance(err, NoCredentialsError | PartialCredentialsError):
        return StorageAccessError(f"{url}: no S3 credentials found ({err}); set AWS_ACCESS_KEY_ID and "
                                  "AWS_SECRET_ACCESS_KEY (or a credentials secret in the pipeline spec)")
    if isinstance(err, ParamValidationError):
        return StorageAccessError(f"{url}: {err}")
    if isinstance(err, BotoCoreError | ConnectionError | TimeoutError):
        return StorageUnavailable(f"{url}: {err}")
    return err


class _Translate:
    """`with _Translate(url):` re-raises boto errors as the classes above."""

    def __init__(self, url: str):
        self.url = url

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: type | None, err: BaseException | None, tb: object) -> None:
        if err is None:
            return
        new = classify(err, self.url)
        if new is err:
            return
        raise new from err


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
            raise StorageAccessError(f"{url!r} has no bucket; expected s3://bucket/prefix")
        return S3Store(parsed.netloc, parsed.path.strip("/"), endpoint_url=endpoint_url, region=region)
    if parsed.scheme in ("", "file"):
        path = parsed.path if parsed.scheme == "file" else url
        if parsed.scheme == "file" and parsed.netloc:  # file://./rel -> netloc '.'
            path = parsed.netloc + parsed.path
        return LocalStore(Path(path).expanduser())
    raise StorageAccessError(f"unsupported storage URL {url!r}; use s3://bucket/prefix, file:///dir or a path")


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
            raise StorageAccessError(f"cannot use {self.url}: {err}") from None  # permissions, a file in the way


# ----------------------------------------------------------------------------------------


@dataclass
class _Retry:
    attempts: int = 6
    base_delay_s: float = 0.25

    def sleep(self, attempt: int) -> None:
        time.sleep(min(self.base_delay_s * 2**attempt, 8.0))


#: the one S3 client policy (module doc); docs/benchmarks.md measures the black-holed read
CONNECT_TIMEOUT_S, READ_TIMEOUT_S, MAX_ATTEMPTS = 5.0, 20.0, 5


def s3_client(endpoint_url: str | None = None, region: str | None = None, *,
              access_key_id: str | None = None, secret_access_key: str | None = None,
              read_timeout_s: float = READ_TIMEOUT_S) -> Any:
    """A boto3 S3 client with the platform's timeouts and retries (trainer and operator)."""
    import boto3
    from botocore.config import Config

    endpoint = endpoint_url or os.environ.get("EVE_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
    config = Config(
        retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},  # connection errors, 5xx, throttling
        connect_timeout=CONNECT_TIMEOUT_S, read_timeout=read_timeout_s, max_pool_connections=32,
        s3={"addressing_style": "path"} if endpoint else {},
    )
    keys = {"aws_access_key_id": access_key_id, "aws_secret_access_key": secret_access_key} if access_key_id else {}
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name=region or os.environ.get("AWS_REGION") or "us-east-1",
        config=config, **keys)


def _client(endpoint_url: str | None, region: str | None) -> Any:
    return s3_client(endpoint_url, region)


_CLIENTS: dict[tuple[str | None, str | None, int], Any] = {}


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

    def _url(self, key: str = "") -> str:
        return f"{self.url}/{key}" if key else self.url

    def put_bytes(self, key: str, data: bytes) -> None:
        with _Translate(self._url(key)):
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def get_bytes(self, key: str) -> bytes:
        with _Translate(self._url(key)):
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def exists(self, key: str) -> bool:
        try:
            with _Translate(self._url(key)):
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except FileNotFoundError:
            return False

    def list(self, prefix: str = "") -> list[str]:
        full = self._key(prefix)
        paginator = self.client.get_paginator("list_objects_v2")
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys: list[str] = []
        with _Translate(self._url(prefix)):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        return sorted(keys)

    def size(self, key: str) -> int:
        with _Translate(self._url(key)):
            return int(self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        with _Translate(self._url(prefix)):
            for i in range(0, len(keys), 1000):
                batch = [{"Key": self._key(k)} for k in keys[i:i + 1000]]
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        return len(keys)

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(multipart_threshold=16 * 2**20, multipart_chunksize=16 * 2**20,
                              max_concurrency=16, use_threads=True)

    def upload_file(self, path: str | Path, key: str) -> None:
        with _Translate(self._url(key)):
            self.client.upload_file(str(path), self.bucket, self._key(key), Config=self._transfer_config())

    def download_file(self, key: str, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with _Translate(self._url(key)):
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
                with _Translate(self._url(key)):
                    data = self.client.get_object(Bucket=self.bucket, Key=self._key(key),
                                                  Range=f"bytes={start}-{end}")["Body"].read()
                if len(data) != end - start + 1:
                    raise StorageUnavailable(f"{self.url}/{key}: short read at byte {start}")
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
        return ResumableS3Stream(self, key, start)  # type: ignore[return-value]  # the read side of IO[bytes]

    def child(self, prefix: str) -> S3Store:
        return S3Store(self.bucket, join(self.prefix, prefix), endpoint_url=self.endpoint_url,
                       region=self.region)

    def check(self) -> None:
        """Fail early, naming the URL: StorageAccessError when the bucket is missing or the
        credentials are wrong or missing, StorageUnavailable when the store does not answer."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as raw:  # noqa: BLE001 - classified below
            err = classify(raw, self.url)
            # HEAD has no body, so no error code: a bare 404 is a missing bucket, 403 a denial
            if isinstance(err, FileNotFoundError):
                err = StorageAccessError(f"bucket of {self.url} does not exist (NoSuchBucket)")
            elif isinstance(err, StorageAccessError) and \
                    getattr(raw, "response", {}).get("Error", {}).get("Code") in ("403", "AccessDenied"):
                err = StorageAccessError(f"bucket of {self.url} is not accessible with these credentials "
                                         "(403 AccessDenied)")
            elif isinstance(err, StorageUnavailable):
                err = StorageUnavailable(f"cannot reach {self.url} at {self.client.meta.endpoint_url}: {raw}")
            if err is raw:
                raise
            raise err from None


class ResumableS3Stream:
    """A read-only stream of one object that reconnects at the byte offset it reached
    when the connection breaks (reset, timeout, 5xx), with exponential backoff."""

    def __init__(self, store: S3Store, key: str, start: int = 0, retry: _Retry | None = None):
        self.store, self.key, self.pos = store, key, start
        self.retry = retry or _Retry()
        self.reconnects = 0
        self._body: Any = None

    def _open(self) -> None:
        rng = {"Range": f"bytes={self.pos}-"} if self.pos else {}
        resp = self.store.client.get_object(Bucket=self.store.bucket, Key=self.store._key(self.key), **rng)
        self._body = resp["Body"]

    def read(self, n: int = -1) -> bytes:
        url = f"{self.store.url}/{self.key}"
        for attempt in range(self.retry.attempts):
            try:
                with _Translate(url):
                    if self._body is None:
                        self._open()
                    data = self._body.read(n) if n >= 0 else self._body.read()
                self.pos += len(data)
                return data
            except (StorageAccessError, FileNotFoundError):
                raise  # the user's to fix: no retry (missing credentials used to be retried ~8 s)
            except (StorageError, OSError) as err:  # reset, timeout, 5xx: reconnect at self.pos
                self._body = None
                self.reconnects += 1
                if attempt == self.retry.attempts - 1:
                    raise StorageUnavailable(f"reading {url} at byte {self.pos} failed: {err}") from err
                log.warning("reading %s at byte %d failed (%s); reconnecting", url, self.pos, err)
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

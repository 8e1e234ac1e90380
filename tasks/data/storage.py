"""Where immutable objects live: a local folder or an S3 prefix, behind one small interface.

Both stores publish a file all at once: a reader sees the whole object or nothing. Large
transfers show a progress bar on stderr.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Protocol

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from configs.settings import S3Settings
from core.s3 import s3_client, split_s3_uri

PROGRESS_MIN_BYTES = 64 * 2**20  # smaller transfers finish before a bar is worth drawing


class Store(Protocol):
    uri: str

    def exists(self, key: str) -> bool: ...

    def read_bytes(self, key: str) -> bytes: ...

    def write_bytes(self, key: str, data: bytes) -> None: ...

    def staged(self, key: str) -> AbstractContextManager[Path]: ...

    def local_copy(self, key: str) -> AbstractContextManager[Path]: ...


def open_store(location: str, s3: S3Settings) -> Store:
    """The store at `location`: `s3://bucket/prefix` or a local folder."""
    if location.startswith("s3://"):
        bucket, prefix = split_s3_uri(location)
        return S3Store(bucket, prefix, s3)
    return LocalStore(Path(location))


@contextmanager
def progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """Yield `advance(n_bytes)`; draws a bar only for transfers large enough to wait for."""
    if total < PROGRESS_MIN_BYTES:
        yield lambda n: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, transient=True) as bar:
        task_id = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task_id, n)


class LocalStore:
    def __init__(self, root: Path):
        self.root = root
        self.uri = str(root)

    def exists(self, key: str) -> bool:
        return (self.root / key).is_file()

    def read_bytes(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def write_bytes(self, key: str, data: bytes) -> None:
        with self.staged(key) as path:
            path.write_bytes(data)

    @contextmanager
    def staged(self, key: str) -> Iterator[Path]:
        """Yield a temporary path to write; on success it is fsynced and renamed into place."""
        final = self.root / key
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
        try:
            yield tmp
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)

    def local_copy(self, key: str) -> AbstractContextManager[Path]:
        return nullcontext(self.root / key)


class S3Store:
    def __init__(self, bucket: str, prefix: str, s3: S3Settings):
        self.bucket, self.prefix = bucket, prefix
        self.uri = f"s3://{bucket}/{prefix}".rstrip("/")
        self.client = s3_client(s3)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def read_bytes(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def write_bytes(self, key: str, data: bytes) -> None:
        # A single PUT is atomic in S3: readers see the old object or the new one.
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    @contextmanager
    def staged(self, key: str) -> Iterator[Path]:
        """Yield a local temporary path; on success it is uploaded (multipart for large files)."""
        with tempfile.TemporaryDirectory(prefix="shipway-") as tmp:
            path = Path(tmp) / Path(key).name
            yield path
            size = path.stat().st_size
            with progress(f"upload {key}", size) as advance:
                self.client.upload_file(str(path), self.bucket, self._key(key), Callback=advance)

    @contextmanager
    def local_copy(self, key: str) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="shipway-") as tmp:
            path = Path(tmp) / Path(key).name
            size = self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"]
            with progress(f"download {key}", size) as advance:
                self.client.download_file(self.bucket, self._key(key), str(path), Callback=advance)
            yield path

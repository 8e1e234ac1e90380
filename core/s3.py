"""S3 addresses and clients, shared by the snapshot store (tasks) and the gateway's artifact reads."""

from __future__ import annotations

from typing import Any

from core.errors import DataError


def split_s3_uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise DataError(f"S3 URI has no bucket: {uri}")
    return bucket, key.strip("/")


def s3_client(s3: Any) -> Any:
    """A boto3 S3 client for a `configs.S3Settings` (duck-typed: core imports no other shipway
    package); credentials come from the usual AWS_* variables and files."""
    import boto3

    return boto3.client("s3", endpoint_url=s3.endpoint_url or None, region_name=s3.region)

"""`s3:` the S3 client of snapshots and data (credentials: the usual AWS_* variables)."""

from __future__ import annotations

from pydantic import Field

from configs.settings.base import Section


class S3Settings(Section):
    endpoint_url: str | None = Field(None, description="S3 endpoint for boto3 (MinIO, moto); empty means AWS itself.")
    region: str = Field("us-east-1", description="Region for the S3 client.")

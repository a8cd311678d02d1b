"""An S3-compatible server on loopback for tests: moto's threaded server, with a bucket and the
environment (dummy credentials, endpoint) that fsspec's ``s3fs`` and boto3 read."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass(frozen=True)
class S3Server:
    """A running server: its endpoint and the bucket made on it."""

    endpoint: str
    bucket: str


@contextlib.contextmanager
def s3_server(bucket: str, scratch: Path) -> Iterator[S3Server]:
    """Start moto's server on a free loopback port, point the environment at it (no user AWS
    configuration is read) and make ``bucket``; stop it and restore the environment after."""
    pytest.importorskip("s3fs")
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name, value in S3_ENV.items():
                mp.setenv(name, value)
            mp.setenv("AWS_ENDPOINT_URL", endpoint)
            mp.setenv("AWS_CONFIG_FILE", str(scratch / "aws-config"))
            mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(scratch / "aws-credentials"))
            for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
                mp.delenv(name, raising=False)
            _clear_fsspec_instances()
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
            yield S3Server(endpoint, bucket)
    finally:
        _clear_fsspec_instances()  # they would keep the stopped server's endpoint
        server.stop()


def _clear_fsspec_instances() -> None:
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()

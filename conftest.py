"""Fixtures shared by every test: a local S3 server (``rclone serve s3``) and a store on it."""

from collections.abc import Iterator

import pytest

from services.common.s3server import LocalS3
from services.common.store import ObjectStore


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3]:
    """One server for the session, serving a temporary folder; its bucket is ``s3.bucket``."""
    with LocalS3(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def store(s3: LocalS3) -> ObjectStore:
    """An ``ObjectStore`` with the server's credentials."""
    return ObjectStore(s3.settings)

"""The object store against a real S3 server (``rclone serve s3``, the ``s3`` fixture), and MemoryStore.

Tests share one server for the session; each writes fresh random bytes where it could disturb others.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from minio.error import InvalidResponseError, ServerError

from services.common.errors import (
    ConfigError,
    IntegrityError,
    InvalidArgument,
    ObjectNotFound,
    ObjectTooLarge,
    PermissionDenied,
    StoreAuthError,
    StoreUnavailable,
)
from services.common.s3server import LocalS3
from services.common.store import MemoryStore, ObjectStore, StoreSettings, content_key, parse_uri

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(params=["s3", "memory"])
def any_store(request: pytest.FixtureRequest) -> ObjectStore | MemoryStore:
    """Each test twice: on the rclone server and on the in-memory twin."""
    return request.getfixturevalue("store") if request.param == "s3" else MemoryStore()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- behaviour shared by ObjectStore and MemoryStore -------------------------------------------------


def test_round_trip(any_store):
    data = os.urandom(1000)
    ref = any_store.put_bytes(data, suffix=".ply", media_type="application/x-ply")
    sha = hashlib.sha256(data).hexdigest()
    assert ref.uri == any_store.uri_for(f"sha256/{sha[:2]}/{sha}.ply")
    assert (ref.sha256, ref.size_bytes, ref.media_type) == (sha, 1000, "application/x-ply")
    assert any_store.get_bytes(ref.uri, sha256=sha) == data
    assert any_store.get_bytes(ref.uri) == data
    assert any_store.get_object(ref) == data
    assert any_store.exists(ref.uri)


def test_empty_object(any_store):
    ref = any_store.put_bytes(b"")
    assert any_store.get_object(ref) == b""


def test_content_addressing(any_store):
    data = os.urandom(64)
    first = any_store.put_bytes(data, suffix=".bin")
    again = any_store.put_bytes(data, suffix=".bin")  # a retried call: same object, no error
    assert again == first
    assert any_store.put_bytes(data, suffix=".png").uri != first.uri
    assert any_store.put_bytes(os.urandom(64), suffix=".bin").uri != first.uri
    assert parse_uri(first.uri)[1] == content_key(first.sha256, ".bin")


def test_missing_object(any_store):
    uri = any_store.uri_for(content_key("ab" * 32, ".bin"))
    assert not any_store.exists(uri)
    with pytest.raises(ObjectNotFound, match=f"no object at {uri}"):
        any_store.get_bytes(uri)


def test_wrong_sha256_is_integrity_error(any_store):
    ref = any_store.put_bytes(b"some bytes")
    wrong = "0" * 64
    with pytest.raises(IntegrityError) as info:
        any_store.get_bytes(ref.uri, sha256=wrong)
    assert ref.uri in str(info.value) and wrong in str(info.value) and ref.sha256 in str(info.value)


def test_max_bytes(any_store):
    ref = any_store.put_bytes(os.urandom(100))
    assert len(any_store.get_bytes(ref.uri, max_bytes=100)) == 100
    with pytest.raises(ObjectTooLarge, match="100 bytes, over the limit of 99 bytes"):
        any_store.get_bytes(ref.uri, max_bytes=99)


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "tire/key",
        "http://tire/key",
        "s3://",
        "s3://tire",
        "s3://tire/",
        "s3://Bad_Bucket/key",
        "s3://tire//key",
        "s3://tire/a/../key",
        "s3://tire/./key",
        "s3://tire/key/",
    ],
)
def test_bad_uri_is_invalid_argument(uri):
    with pytest.raises(InvalidArgument) as info:
        parse_uri(uri)
    assert info.value.field == "uri" and "s3://bucket/key" in str(info.value)


def test_stores_check_uri_and_sha256(any_store):
    with pytest.raises(InvalidArgument, match="`uri`"):
        any_store.get_bytes("s3://tire")
    with pytest.raises(InvalidArgument, match="`uri`"):
        any_store.exists("not a uri")
    with pytest.raises(InvalidArgument, match="`sha256` must be 64 lower-case hex digits"):
        any_store.get_bytes(any_store.put_bytes(b"x").uri, sha256="ABC")
    with pytest.raises(ValueError, match="suffix"):
        any_store.put_bytes(b"x", suffix="/../x")


def test_parse_uri():
    assert parse_uri("s3://tire/sha256/ab/abc.ply") == ("tire", "sha256/ab/abc.ply")
    assert ObjectStore.parse_uri("s3://my.bucket-1/k") == ("my.bucket-1", "k")


def test_memory_store_put_limit():
    with pytest.raises(ObjectTooLarge, match="11 bytes, over the limit of 10 bytes"):
        MemoryStore(max_object_bytes=10).put_bytes(b"x" * 11)


# --- ObjectStore on the rclone server ---------------------------------------------------------------


def test_tampered_object_is_integrity_error(s3, store):
    data = os.urandom(256)
    ref = store.put_bytes(data, suffix=".bin")
    path = s3.root_dir / s3.bucket / parse_uri(ref.uri)[1]
    assert path.read_bytes() == data
    path.write_bytes(bytes(b ^ 0xFF for b in data))  # same size, so no stale size in rclone's cache
    with pytest.raises(IntegrityError, match=ref.sha256):
        store.get_object(ref)


def test_max_bytes_is_checked_before_the_body_is_read(store, monkeypatch):
    ref = store.put_bytes(os.urandom(100))
    get_object = store._client.get_object

    class HeadersOnly:
        def __init__(self, response):
            self.headers, self._response = response.headers, response

        def read(self, *args):
            raise AssertionError("the body was read")

        def close(self):
            self._response.close()

        def release_conn(self):
            self._response.release_conn()

    monkeypatch.setattr(store._client, "get_object", lambda *a, **k: HeadersOnly(get_object(*a, **k)))
    with pytest.raises(ObjectTooLarge, match="100 bytes, over the limit of 10 bytes"):
        store.get_bytes(ref.uri, max_bytes=10)


def test_put_limit(s3):
    small = ObjectStore(dataclasses.replace(s3.settings, max_object_bytes=10))
    with pytest.raises(ObjectTooLarge, match="11 bytes, over the limit of 10 bytes"):
        small.put_bytes(b"x" * 11)


def test_large_object_round_trip(store):
    # Over minio's 5 MiB part size: a multipart upload, which rclone streams into the file.
    data = os.urandom(6 * 1024 * 1024 + 1)
    ref = store.put_bytes(data, suffix=".bin")
    assert store.get_object(ref) == data


@pytest.mark.parametrize("which", ["secret_key", "access_key"])
def test_wrong_credentials_are_store_auth_error(s3, store, which):
    ref = store.put_bytes(b"readable with the right keys")
    wrong = "wrong" + os.urandom(8).hex()
    bad = ObjectStore(dataclasses.replace(s3.settings, **{which: wrong}))
    for call in (
        lambda: bad.get_object(ref),
        lambda: bad.exists(ref.uri),
        lambda: bad.put_bytes(os.urandom(8)),
        bad.ensure_bucket,
    ):
        with pytest.raises(StoreAuthError) as info:
            call()
        message = str(info.value)
        assert "HTTP 403" in message and "TIRE_S3_SECRET_KEY" in message and bad.endpoint_url in message
        assert bad.settings.access_key in message and bad.settings.secret_key not in message
    assert bad.settings.secret_key not in repr(bad) + repr(bad.settings)


def test_missing_bucket(s3):
    nowhere = ObjectStore(dataclasses.replace(s3.settings, bucket="no-such-bucket"))
    with pytest.raises(ObjectNotFound, match=r"no bucket 'no-such-bucket' .* check TIRE_S3_BUCKET"):
        nowhere.put_bytes(b"x")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        # minio-py parses only application/xml error bodies; rclone sends text/xml ones.
        (
            InvalidResponseError(403, "text/xml", "<Error><Code>SignatureDoesNotMatch</Code></Error>"),
            StoreAuthError,
        ),
        (InvalidResponseError(404, "text/xml", "<Error><Code>NoSuchKey</Code></Error>"), ObjectNotFound),
        (InvalidResponseError(503, "text/html", "<html>proxy down</html>"), StoreUnavailable),
        (ServerError("HTTP 502", 502), StoreUnavailable),
    ],
)
def test_error_translation(store, error, expected):
    with pytest.raises(expected), store._errors("s3://tire/key"):
        raise error


def test_unreachable_store_fails_fast(s3):
    port = closed_port()
    dead = ObjectStore(dataclasses.replace(s3.settings, endpoint=f"127.0.0.1:{port}"))
    start = time.monotonic()
    with pytest.raises(StoreUnavailable, match=f"http://127.0.0.1:{port} cannot be reached"):
        dead.get_bytes(f"s3://{s3.bucket}/key")
    with pytest.raises(StoreUnavailable):
        dead.put_bytes(b"x")
    assert time.monotonic() - start < 5


def test_a_presigned_put_lands_at_its_staging_key_and_promote_checks_it(store):
    data = os.urandom(500)
    sha = hashlib.sha256(data).hexdigest()
    put_url = store.presigned_put("staging/alice/0001.bin", expires=timedelta(minutes=5))
    with urllib.request.urlopen(urllib.request.Request(put_url, data=data, method="PUT"), timeout=5) as reply:
        assert reply.status == 200
    staged = store.uri_for("staging/alice/0001.bin")
    with pytest.raises(IntegrityError, match="sha256"):
        store.promote(staged, "0" * 64, len(data), suffix=".bin")
    with pytest.raises(ObjectTooLarge, match="over the limit of 499 bytes"):
        store.promote(staged, sha, len(data) - 1, suffix=".bin")  # a body past the size is not read
    with pytest.raises(IntegrityError, match="500 bytes where 501 were announced"):
        store.promote(staged, sha, len(data) + 1, suffix=".bin")
    assert store.exists(staged)  # kept for another PUT
    ref = store.promote(staged, sha, len(data), suffix=".bin", media_type="application/x-ply")
    assert (ref.uri, ref.sha256, ref.size_bytes) == (store.uri_for(content_key(sha, ".bin")), sha, 500)
    assert not store.exists(staged)
    assert store.get_bytes(ref.uri, sha256=sha) == data
    get_url = store.presigned_get(ref.uri, expires=timedelta(minutes=5))
    with urllib.request.urlopen(get_url, timeout=5) as reply:
        assert reply.read() == data


def test_job_data_is_read_from_the_deployments_bucket_only(s3, any_store):
    other = ObjectStore(dataclasses.replace(s3.settings, bucket="other-bucket"))
    other.ensure_bucket()
    secret = other.put_bytes(b"another bucket's secret")
    for attempt in (
        lambda: any_store.get_bytes(secret.uri),
        lambda: any_store.get_object(secret),
        lambda: any_store.exists(secret.uri),
    ):
        with pytest.raises(PermissionDenied, match="outside this deployment's bucket"):
            attempt()
    if isinstance(any_store, ObjectStore):
        with pytest.raises(PermissionDenied):
            any_store.presigned_get(secret.uri)
        # Model weights may live anywhere: they are read with any_bucket, never from a request.
        assert any_store.get_bytes(secret.uri, any_bucket=True) == b"another bucket's secret"


def test_presigned_urls_name_the_public_endpoint(s3, store):
    port = s3.settings.endpoint.rsplit(":", 1)[1]
    # localhost reaches the same server under another name: URLs signed for it work from outside.
    public = ObjectStore(dataclasses.replace(s3.settings, public_endpoint=f"http://localhost:{port}/"))
    uri = store.put_bytes(b"for a client outside").uri
    url = public.presigned_get(uri, expires=timedelta(minutes=5))
    assert url.startswith(f"http://localhost:{port}/")
    with urllib.request.urlopen(url, timeout=5) as reply:
        assert reply.read() == b"for a client outside"
    # Signed for one name, refused under another: the signature covers the host.
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(url.replace("localhost", "127.0.0.1"), timeout=5)
    assert info.value.code == 403
    info.value.close()
    tls = ObjectStore(dataclasses.replace(s3.settings, public_endpoint="https://s3.example.com"))
    assert tls.presigned_put("staging/x", expires=timedelta(minutes=5)).startswith("https://s3.example.com/")
    for bad in ("s3.example.com/path", "ftp://s3.example.com", "http://"):
        with pytest.raises(ConfigError, match="public_endpoint"):
            dataclasses.replace(s3.settings, public_endpoint=bad)


def test_tampered_or_unsigned_url_is_refused(store):
    uri = store.put_bytes(os.urandom(32)).uri
    url = store.presigned_get(uri, expires=timedelta(minutes=5))
    tampered = url[:-1] + ("0" if url[-1] != "0" else "1")
    # rclone answers an unsigned request 400 (UnsupportedAlgorithm), MinIO 403; either way, refused.
    for bad, codes in ((tampered, {403}), (url.split("?")[0], {400, 403})):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(bad, timeout=5)
        assert info.value.code in codes
        info.value.close()


def test_concurrent_use_from_threads(store):
    blobs = [os.urandom(2000) for _ in range(32)]
    with ThreadPoolExecutor(8) as pool:
        refs = list(pool.map(store.put_bytes, blobs))
        assert list(pool.map(store.get_object, refs)) == blobs


def test_ensure_bucket_creates_and_tolerates_an_existing_bucket(s3):
    other = ObjectStore(dataclasses.replace(s3.settings, bucket="other-bucket"))
    other.ensure_bucket()
    other.ensure_bucket()
    assert (s3.root_dir / "other-bucket").is_dir()
    assert other.get_object(other.put_bytes(b"in the other bucket")) == b"in the other bucket"
    with pytest.raises(PermissionDenied):
        ObjectStore(s3.settings).get_bytes(other.put_bytes(b"not the deployment's").uri)


# --- settings -----------------------------------------------------------------------------------------


ENV = {
    "TIRE_S3_ENDPOINT": "minio.internal:9000",
    "TIRE_S3_ACCESS_KEY": "service",
    "TIRE_S3_SECRET_KEY": "hunter2-secret",
    "TIRE_S3_BUCKET": "tire",
}


def test_settings_from_env():
    settings = StoreSettings.from_env(ENV)
    assert (settings.endpoint, settings.secure, settings.region) == (
        "minio.internal:9000",
        False,
        "us-east-1",
    )
    assert settings.max_object_bytes == 2 * 1024**3
    assert "hunter2" not in repr(settings)
    https = StoreSettings.from_env({**ENV, "TIRE_S3_ENDPOINT": "https://minio.internal:9000/"})
    assert (https.endpoint, https.secure) == ("minio.internal:9000", True)
    http = StoreSettings.from_env({**ENV, "TIRE_S3_ENDPOINT": "http://h:1", "TIRE_S3_SECURE": "false"})
    assert (http.endpoint, http.secure) == ("h:1", False)


@pytest.mark.parametrize("missing", sorted(ENV))
def test_settings_name_the_missing_variable(missing):
    env = {k: v for k, v in ENV.items() if k != missing}
    with pytest.raises(ValueError, match=missing):
        StoreSettings.from_env(env)


@pytest.mark.parametrize(
    "override",
    [
        {"TIRE_S3_ENDPOINT": "ftp://h:1"},
        {"TIRE_S3_ENDPOINT": "https://h:1", "TIRE_S3_SECURE": "false"},
        {"TIRE_S3_ENDPOINT": "h:1/path"},
        {"TIRE_S3_SECRET_KEY": ""},
        {"TIRE_S3_SECURE": "maybe"},
    ],
)
def test_bad_settings_are_config_errors(override):
    with pytest.raises(ConfigError) as info:
        StoreSettings.from_env({**ENV, **override})
    assert "hunter2" not in str(info.value)


# --- the local server ---------------------------------------------------------------------------------


def test_local_s3_env_reads_back_as_its_settings(s3):
    assert StoreSettings.from_env(s3.env) == s3.settings


def test_local_s3_refuses_a_busy_port(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(RuntimeError, match="in use"):
            LocalS3(tmp_path, port=busy.getsockname()[1]).start()


def test_local_s3_reports_why_rclone_died(tmp_path, monkeypatch):
    fake = tmp_path / "rclone"
    fake.write_text("#!/bin/sh\necho 'bad flag --frobnicate' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("TIRE_RCLONE", str(fake))
    server = LocalS3(tmp_path / "root")
    with pytest.raises(RuntimeError, match=r"(?s)exited with code 3.*bad flag --frobnicate"):
        server.start()
    assert not server.running


def test_tire_s3_command_prints_exports_and_stops_on_sigterm(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "services.common.s3server", "--dir", str(tmp_path), "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        lines = [process.stdout.readline() for _ in range(6)]
        env = dict(shlex.split(line)[1].split("=", 1) for line in lines)
        remote = ObjectStore(StoreSettings.from_env(env))
        assert remote.get_object(remote.put_bytes(b"via tire-s3")) == b"via tire-s3"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()


def test_list_prefix_and_remove(any_store, tmp_path):
    (tmp_path / "inpaint" / "1").mkdir(parents=True)
    (tmp_path / "inpaint" / "1" / "backend.json").write_text("{}")
    (tmp_path / "inpaint" / "config.pbtxt").write_text("name: 'inpaint'")
    prefix = any_store.uri_for("repository")
    written = any_store.upload_folder(tmp_path, prefix)
    assert any_store.list_prefix(prefix) == ["inpaint/1/backend.json", "inpaint/config.pbtxt"]
    assert any_store.list_prefix(any_store.uri_for("nothing-here")) == []
    any_store.remove([uri for uri in written if uri.endswith("backend.json")] + [any_store.uri_for("absent")])
    assert any_store.list_prefix(prefix) == ["inpaint/config.pbtxt"]


def test_a_content_addressed_uri_names_its_sha256():
    from services.common.store import addressed_sha256

    sha = hashlib.sha256(b"x").hexdigest()
    assert addressed_sha256(f"s3://tire/{content_key(sha, '.ply')}") == sha
    assert addressed_sha256(f"s3://tire/{content_key(sha)}") == sha
    assert addressed_sha256(f"s3://tire/sha256/00/{sha}.ply") is None  # the wrong fan-out folder
    assert addressed_sha256("s3://tire/uploads/report.json") is None

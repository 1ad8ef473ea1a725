"""The object store: bytes live here, messages carry ``s3://bucket/key`` references to them.

Keys are content-addressed, ``sha256/<first 2 hex>/<64 hex><suffix>``, so a retried call writes the same
object again (a no-op) and a reader can verify what it reads against the sha256 in its reference.

``ObjectStore`` talks S3 through the ``minio`` client, to MinIO in production and to ``rclone serve s3``
locally (``services.common.s3server``). ``MemoryStore`` is its in-memory twin for unit tests. Code that
only reads and writes objects takes a ``BlobStore``, which both satisfy.

Every failure is raised as a class from ``services.common.errors``: ObjectNotFound, StoreAuthError,
ObjectTooLarge, IntegrityError, StoreUnavailable, InvalidArgument (a malformed URI or sha256).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import pathlib
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

import urllib3
from minio import Minio
from minio.error import InvalidResponseError, S3Error, ServerError
from tire.v1 import common_pb2

from services.common import config, validation
from services.common.errors import (
    ConfigError,
    IntegrityError,
    ObjectNotFound,
    ObjectTooLarge,
    PermissionDenied,
    StoreAuthError,
    StoreUnavailable,
    TireError,
    Unimplemented,
)

GiB = 1024**3

# An unreachable store must fail a call in seconds: 3 connection attempts of 2 s each at worst (a refused
# connection fails at once). Reads may legitimately pause while the store streams a large object.
_CONNECT_TIMEOUT_S = 2.0
_READ_TIMEOUT_S = 60.0
_RETRIES = 2
# Connections kept per host; services call the store from every gRPC worker thread.
_POOL_SIZE = 16

_SUFFIX = re.compile(r"(\.[A-Za-z0-9_-]+)*")
# minio-py only parses error bodies served as application/xml; rclone serves them as text/xml.
_ERROR_CODE = re.compile(r"<Code>([^<]+)</Code>")
_NOT_FOUND_CODES = {"NoSuchKey", "ResourceNotFound"}
_AUTH_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
_BUSY_CODES = {"SlowDown", "ServiceUnavailable", "InternalError"}


# Objects up to this size are PUT without a stat first (see ObjectStore.put_bytes).
_STAT_BEFORE_PUT_BYTES = 4 * 2**20


@dataclass(frozen=True)
class StoreSettings:
    """Where the object store is and how much to read or write at once.

    Attributes:
        endpoint: ``host:port``, without scheme (``from_env`` accepts and strips ``http(s)://``).
        access_key: S3 access key id.
        secret_key: S3 secret key; never printed, not even in ``repr``.
        bucket: bucket that ``put_bytes`` writes to.
        secure: use HTTPS.
        region: signing region; set explicitly so the client never asks the store for it.
        max_object_bytes: default limit on one object read or written.
        public_endpoint: where clients outside reach the same store, ``host:port`` or
            ``http(s)://host:port`` (a scheme sets its own HTTPS, else ``secure`` applies); presigned URLs
            name it, since the signature covers the host. Empty: ``endpoint``.
    """

    endpoint: str
    access_key: str
    secret_key: str = dataclasses.field(repr=False)
    bucket: str
    secure: bool = False
    region: str = "us-east-1"
    max_object_bytes: int = 2 * GiB
    public_endpoint: str = ""

    def __post_init__(self) -> None:
        checks = [
            (
                bool(self.endpoint) and "/" not in self.endpoint,
                "endpoint",
                "must be host:port, no scheme or path",
            ),
            (bool(self.access_key), "access_key", "must not be empty"),
            (bool(self.secret_key), "secret_key", "must not be empty"),
            (bool(self.bucket), "bucket", "must not be empty"),
            (bool(self.region), "region", "must not be empty"),
            (self.max_object_bytes >= 1, "max_object_bytes", "must be at least 1"),
            (
                re.fullmatch(r"((https?)://)?[^/:\s]+(:\d+)?/?", self.public_endpoint or "x") is not None,
                "public_endpoint",
                "must be host:port or http(s)://host:port, no path",
            ),
        ]
        for ok, name, problem in checks:
            if not ok:
                shown = "<hidden>" if name == "secret_key" else repr(getattr(self, name))
                raise ConfigError(f"StoreSettings.{name} {problem}, got {shown}.")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> StoreSettings:
        """Read ``TIRE_S3_ENDPOINT``, ``_ACCESS_KEY``, ``_SECRET_KEY``, ``_BUCKET`` (required) and
        ``TIRE_S3_SECURE``, ``_REGION``, ``_MAX_OBJECT_BYTES``, ``_PUBLIC_ENDPOINT`` (optional).

        ``TIRE_S3_ENDPOINT`` may be ``host:port`` or ``http(s)://host:port``; a scheme sets ``secure``
        and must agree with ``TIRE_S3_SECURE`` when both are given.

        Raises:
            ConfigError: a variable is missing or malformed; the message names it.
        """
        endpoint = environ.get("TIRE_S3_ENDPOINT", "")
        scheme, sep, rest = endpoint.partition("://")
        if not sep:
            return config.from_env(cls, "TIRE_S3_", environ)
        if scheme.lower() not in ("http", "https"):
            raise ConfigError(f"TIRE_S3_ENDPOINT must start with http:// or https://, got {endpoint!r}.")
        implied = scheme.lower() == "https"
        overrides = {"TIRE_S3_ENDPOINT": rest.rstrip("/")}
        if "TIRE_S3_SECURE" not in environ:
            overrides["TIRE_S3_SECURE"] = str(implied)
        settings = config.from_env(cls, "TIRE_S3_", {**environ, **overrides})
        if settings.secure != implied:
            raise ConfigError(
                f"TIRE_S3_ENDPOINT {endpoint!r} and TIRE_S3_SECURE={environ['TIRE_S3_SECURE']!r} disagree."
            )
        return settings


class BlobStore(Protocol):
    """What code that reads and writes objects needs; ``ObjectStore`` and ``MemoryStore`` provide it."""

    def put_bytes(
        self, data: bytes, *, suffix: str = "", media_type: str = "application/octet-stream"
    ) -> common_pb2.ObjectRef: ...

    def get_bytes(
        self, uri: str, *, sha256: str | None = None, max_bytes: int | None = None, any_bucket: bool = False
    ) -> bytes: ...

    def get_object(self, ref: common_pb2.ObjectRef, *, max_bytes: int | None = None) -> bytes: ...

    def exists(self, uri: str) -> bool: ...

    def uri_for(self, key: str) -> str: ...

    def ensure_bucket(self) -> None: ...

    def presigned_put(self, key: str, *, expires: timedelta = timedelta(hours=1)) -> str: ...

    def remove(self, uris: list[str]) -> None: ...

    def promote(
        self, staged_uri: str, sha256: str, size_bytes: int, *, suffix: str = "", media_type: str = ""
    ) -> common_pb2.ObjectRef: ...

    def presigned_get(self, uri: str, *, expires: timedelta = timedelta(hours=1)) -> str: ...


def content_sha256(data: bytes) -> str:
    """The content address of ``data``: its SHA-256, 64 lower-case hex digits (``content_key``'s input)."""
    return hashlib.sha256(data).hexdigest()


_CONTENT_KEY = re.compile(r"sha256/([0-9a-f]{2})/(\1[0-9a-f]{62})(\.[A-Za-z0-9_.-]+)?")


def addressed_sha256(uri: str) -> str | None:
    """The sha256 a content-addressed object's URI names (its key is ``content_key``'s), else None."""
    key = uri.removeprefix("s3://").partition("/")[2]
    match = _CONTENT_KEY.fullmatch(key)
    return match.group(2) if match else None


def content_key(sha256: str, suffix: str = "") -> str:
    """The key of the object whose bytes hash to ``sha256``: ``sha256/ab/ab12...<suffix>``.

    Raises:
        InvalidArgument: ``sha256`` is not 64 lower-case hex digits.
        ValueError: ``suffix`` is not empty or dot-separated words like ``.ply`` or ``.tar.gz``.
    """
    validation.sha256(sha256, "sha256")
    if not _SUFFIX.fullmatch(suffix):
        raise ValueError(f"suffix must look like '.ply' or '.tar.gz', got {suffix!r}")
    return f"sha256/{sha256[:2]}/{sha256}{suffix}"


def parse_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into ``(bucket, key)``.

    Raises:
        InvalidArgument: on field ``uri``, for anything else, including keys with empty, ``.`` or ``..``
            segments (S3 servers that store keys as files refuse those).
    """
    validation.s3_uri(uri, "uri")
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    validation.require(
        all(part not in ("", ".", "..") for part in key.split("/")),
        "uri",
        uri,
        "must look like s3://bucket/key, with no empty, '.' or '..' segments in the key",
    )
    return bucket, key


class ObjectStore:
    """An S3 object store through the ``minio`` client. Thread-safe: share one per process.

    Nothing is contacted on construction; call ``ensure_bucket()`` at start-up to fail early.
    """

    parse_uri = staticmethod(parse_uri)

    def __init__(self, settings: StoreSettings):
        self.settings = settings
        self.endpoint_url = f"{'https' if settings.secure else 'http'}://{settings.endpoint}"
        self._client = Minio(
            settings.endpoint,
            access_key=settings.access_key,
            secret_key=settings.secret_key,
            secure=settings.secure,
            region=settings.region,
            http_client=_http_client(),
        )
        # Presigning is a local computation (the region is set, so nothing is asked of the store); a
        # client for the public name signs URLs that outside clients can use.
        self._presigner = self._client
        if settings.public_endpoint:
            scheme, sep, host = settings.public_endpoint.rstrip("/").rpartition("://")
            self._presigner = Minio(
                host,
                access_key=settings.access_key,
                secret_key=settings.secret_key,
                secure=scheme == "https" if sep else settings.secure,
                region=settings.region,
            )

    def __repr__(self) -> str:
        return f"ObjectStore({self.endpoint_url}, bucket={self.settings.bucket!r})"

    def uri_for(self, key: str) -> str:
        """``s3://<settings.bucket>/<key>``."""
        return f"s3://{self.settings.bucket}/{key}"

    def ensure_bucket(self) -> None:
        """Create ``settings.bucket`` unless it exists (safe to race with other replicas)."""
        bucket = self.settings.bucket
        with self._errors(f"s3://{bucket}"):
            if self._client.bucket_exists(bucket):
                return
            try:
                self._client.make_bucket(bucket)
            except S3Error as exc:
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    def put_bytes(
        self, data: bytes, *, suffix: str = "", media_type: str = "application/octet-stream"
    ) -> common_pb2.ObjectRef:
        """Store ``data`` at its content key in ``settings.bucket``; a no-op if it is already there.

        Args:
            data: the object's bytes, at most ``settings.max_object_bytes``.
            suffix: appended to the key so people and tools see the format, e.g. ".ply", ".png".
            media_type: stored as the object's Content-Type and returned in the reference.

        Raises:
            ObjectTooLarge, StoreAuthError, StoreUnavailable.
        """
        _check_size(f"the object to write ({media_type})", len(data), self.settings.max_object_bytes)
        sha256 = content_sha256(data)
        key = content_key(sha256, suffix)
        uri = self.uri_for(key)
        # Same key, same bytes: a large object already there is not sent again (a different size means
        # a corrupt earlier write: replace it). A small one is written without asking first: one round
        # trip instead of two, and rewriting identical bytes under their own key changes nothing.
        if len(data) <= _STAT_BEFORE_PUT_BYTES or self._size(uri) != len(data):
            with self._errors(uri):
                self._client.put_object(
                    self.settings.bucket, key, io.BytesIO(data), len(data), content_type=media_type
                )
        return common_pb2.ObjectRef(uri=uri, sha256=sha256, size_bytes=len(data), media_type=media_type)

    def get_bytes(
        self, uri: str, *, sha256: str | None = None, max_bytes: int | None = None, any_bucket: bool = False
    ) -> bytes:
        """The bytes at ``uri``, verified against ``sha256`` when given.

        Args:
            uri: ``s3://bucket/key`` in ``settings.bucket`` (in any bucket with ``any_bucket``: model
                weights, never a caller's reference).
            sha256: lower-case hex digest the bytes must have.
            max_bytes: refuse larger objects, checked before the body is read; default
                ``settings.max_object_bytes``.

        Raises:
            InvalidArgument, PermissionDenied (another bucket), ObjectNotFound, ObjectTooLarge,
            IntegrityError, StoreAuthError, StoreUnavailable.
        """
        bucket, key = parse_uri(uri) if any_bucket else self._own(uri)
        if sha256 is not None:
            validation.sha256(sha256, "sha256")
        limit = self.settings.max_object_bytes if max_bytes is None else max_bytes
        with self._errors(uri):
            response = self._client.get_object(bucket, key)
            try:
                # The declared length is checked before the body is read, and the read never goes past
                # the limit whatever the header says.
                declared = response.headers.get("content-length")
                if declared is not None:
                    _check_size(uri, int(declared), limit)
                data = response.read(limit + 1)
            finally:
                response.close()
                response.release_conn()
        _check_size(uri, len(data), limit)
        if sha256 is not None:
            _verify(uri, data, sha256)
        return data

    def get_object(self, ref: common_pb2.ObjectRef, *, max_bytes: int | None = None) -> bytes:
        """The bytes ``ref`` points to, verified against ``ref.sha256`` (which must be set)."""
        return self.get_bytes(ref.uri, sha256=ref.sha256, max_bytes=max_bytes)

    def exists(self, uri: str) -> bool:
        """Whether an object is at ``uri`` (in ``settings.bucket``).

        Raises InvalidArgument, PermissionDenied, StoreAuthError, StoreUnavailable."""
        self._own(uri)
        return self._size(uri) is not None

    def presigned_put(self, key: str, *, expires: timedelta = timedelta(hours=1)) -> str:
        """An HTTP URL that lets anyone PUT any bytes at ``key`` in ``settings.bucket`` until ``expires``
        from now. Give out only staging keys: the URL binds neither the bytes nor their size, so what
        lands there is checked by ``promote`` before anything reads it."""
        with self._errors(self.uri_for(key)):
            return self._presigner.presigned_put_object(self.settings.bucket, key, expires=expires)

    def presigned_get(self, uri: str, *, expires: timedelta = timedelta(hours=1)) -> str:
        """An HTTP URL that lets anyone GET the object at ``uri`` (in ``settings.bucket``) until
        ``expires`` from now."""
        bucket, key = self._own(uri)
        with self._errors(uri):
            return self._presigner.presigned_get_object(bucket, key, expires=expires)

    def promote(
        self, staged_uri: str, sha256: str, size_bytes: int, *, suffix: str = "", media_type: str = ""
    ) -> common_pb2.ObjectRef:
        """Make the bytes a client PUT at ``staged_uri`` the content-addressed object they claim to be:
        check their size and sha256, write them at their content key, remove the staged copy.

        The bytes written are the ones checked (read once, into memory), so a PUT racing the check
        cannot slip other bytes in.

        Raises:
            ObjectNotFound: nothing was uploaded there.
            IntegrityError: the size or the sha256 differs (the staged copy is kept for another PUT).
            ObjectTooLarge, StoreAuthError, StoreUnavailable.
        """
        return _promote(self, staged_uri, sha256, size_bytes, suffix, media_type)

    def upload_folder(self, folder: str | os.PathLike, prefix_uri: str) -> list[str]:
        """Copy every file under ``folder`` to ``<prefix_uri>/<relative path>`` (model weights, which are
        not content-addressed: they are named by where they are, like a model on a hub).

        Files are streamed, so their size is not limited by memory. Returns the URIs written, sorted.

        Raises:
            InvalidArgument (a malformed prefix), StoreAuthError, StoreUnavailable.
        """
        bucket, prefix = parse_uri(prefix_uri.rstrip("/"))
        written = []
        for path in sorted(_files_under(folder)):
            key = f"{prefix}/{path.relative_to(folder).as_posix()}"
            with self._errors(f"s3://{bucket}/{key}"):
                self._client.fput_object(bucket, key, str(path))
            written.append(f"s3://{bucket}/{key}")
        return written

    def remove(self, uris: list[str]) -> None:
        """Delete the objects at ``uris`` (those absent are skipped). Only for what a service wrote and
        owns: a model version Triton refused, or job data the coordinator knows nothing uses any more.

        Raises:
            InvalidArgument (a malformed URI), StoreAuthError, StoreUnavailable.
        """
        for uri in uris:
            bucket, key = parse_uri(uri)
            with self._errors(uri):
                self._client.remove_object(bucket, key)

    def modified_before(self, prefix_uri: str, before: datetime) -> list[str]:
        """URIs of the objects under ``prefix_uri`` last written before ``before`` (aware), sorted.

        Raises:
            InvalidArgument (a malformed prefix), StoreAuthError, StoreUnavailable.
        """
        bucket, prefix = parse_uri(prefix_uri.rstrip("/"))
        with self._errors(prefix_uri):
            return sorted(
                f"s3://{bucket}/{item.object_name}"
                for item in self._client.list_objects(bucket, prefix=f"{prefix}/", recursive=True)
                if not item.is_dir and item.last_modified is not None and item.last_modified < before
            )

    def list_prefix(self, prefix_uri: str) -> list[str]:
        """The keys under ``prefix_uri``, relative to it, sorted (empty when there are none).

        Raises:
            InvalidArgument (a malformed prefix), StoreAuthError, StoreUnavailable.
        """
        bucket, prefix = parse_uri(prefix_uri.rstrip("/"))
        with self._errors(prefix_uri):
            keys = [
                item.object_name
                for item in self._client.list_objects(bucket, prefix=f"{prefix}/", recursive=True)
                if not item.is_dir
            ]
        return sorted(key[len(prefix) + 1 :] for key in keys)

    def download_prefix(self, prefix_uri: str, folder: str | os.PathLike) -> list[str]:
        """Copy every object under ``prefix_uri`` to ``folder``, keeping the key's path below the prefix.

        Objects are streamed to files. Returns the relative paths written, sorted.

        Raises:
            InvalidArgument (a malformed prefix), ObjectNotFound (nothing under the prefix), StoreAuthError,
            StoreUnavailable.
        """
        bucket, prefix = parse_uri(prefix_uri.rstrip("/"))
        relative = self.list_prefix(prefix_uri)
        if not relative:
            raise ObjectNotFound(f"no objects under {prefix_uri}.")
        for rel in relative:
            with self._errors(f"s3://{bucket}/{prefix}/{rel}"):
                self._client.fget_object(bucket, f"{prefix}/{rel}", os.path.join(folder, rel))
        return relative

    def _own(self, uri: str) -> tuple[str, str]:
        """``parse_uri(uri)``, refusing a bucket other than ``settings.bucket``."""
        return _own_bucket(uri, self.settings.bucket)

    def _size(self, uri: str) -> int | None:
        """Size of the object at ``uri`` in bytes, or None when there is none."""
        bucket, key = parse_uri(uri)
        try:
            with self._errors(uri):
                return self._client.stat_object(bucket, key).size
        except ObjectNotFound:
            return None

    @contextlib.contextmanager
    def _errors(self, uri: str) -> Iterator[None]:
        """Translate minio and urllib3 exceptions raised inside into the project's error classes."""
        try:
            yield
        except S3Error as exc:
            raise self._error(exc.code or "", exc.response.status, uri) from exc
        except InvalidResponseError as exc:
            match = _ERROR_CODE.search(str(exc))
            # The HTTP status is only kept in a private attribute; the body's <Code> usually suffices.
            raise self._error(match.group(1) if match else "", getattr(exc, "_code", 0), uri) from exc
        except ServerError as exc:
            raise StoreUnavailable(
                f"the object store at {self.endpoint_url} failed with HTTP {exc.status_code} on {uri}."
            ) from exc
        except urllib3.exceptions.HTTPError as exc:  # MaxRetryError, timeouts, dropped connections
            raise StoreUnavailable(
                f"the object store at {self.endpoint_url} cannot be reached ({_reason(exc)}); "
                "check TIRE_S3_ENDPOINT and that the store is up."
            ) from exc

    def _error(self, code: str, status: int, uri: str) -> TireError:
        if code == "NoSuchBucket":
            bucket = uri.removeprefix("s3://").split("/", 1)[0]
            return ObjectNotFound(
                f"no bucket {bucket!r} in the object store at {self.endpoint_url} (for {uri}); "
                "create it or check TIRE_S3_BUCKET."
            )
        if code in _NOT_FOUND_CODES or (not code and status == 404):
            return ObjectNotFound(f"no object at {uri} ({code or 'HTTP 404'}).")
        if code in _AUTH_CODES or status == 403:
            return StoreAuthError(
                f"the object store at {self.endpoint_url} rejected the credentials of access key "
                f"{self.settings.access_key!r} (HTTP 403, {code or 'no error code'}); "
                "check TIRE_S3_ACCESS_KEY/TIRE_S3_SECRET_KEY."
            )
        if code == "EntityTooLarge":
            return ObjectTooLarge(f"the object store at {self.endpoint_url} refused {uri} as too large.")
        if code in _BUSY_CODES or status >= 500:
            return StoreUnavailable(f"the object store at {self.endpoint_url} is busy or failing ({code}).")
        return TireError(f"the object store at {self.endpoint_url} refused a request on {uri} ({code}).")


class MemoryStore:
    """An in-memory ``BlobStore`` for unit tests: same keys, URIs, checks and errors as ``ObjectStore``.

    Objects live in ``s3://<bucket>/...`` URIs of the (made-up) ``bucket``; thread-safe.
    """

    def __init__(self, bucket: str = "memory", max_object_bytes: int = 2 * GiB):
        self.bucket = bucket
        self.max_object_bytes = max_object_bytes
        self._objects: dict[str, bytes] = {}
        self._written: dict[str, datetime] = {}
        self._lock = threading.Lock()

    def uri_for(self, key: str) -> str:
        """``s3://<bucket>/<key>``."""
        return f"s3://{self.bucket}/{key}"

    def put_bytes(
        self, data: bytes, *, suffix: str = "", media_type: str = "application/octet-stream"
    ) -> common_pb2.ObjectRef:
        """As ``ObjectStore.put_bytes``."""
        _check_size(f"the object to write ({media_type})", len(data), self.max_object_bytes)
        sha256 = content_sha256(data)
        uri = self.uri_for(content_key(sha256, suffix))
        with self._lock:
            self._objects[uri] = bytes(data)
            self._written[uri] = datetime.now(UTC)
        return common_pb2.ObjectRef(uri=uri, sha256=sha256, size_bytes=len(data), media_type=media_type)

    def get_bytes(
        self, uri: str, *, sha256: str | None = None, max_bytes: int | None = None, any_bucket: bool = False
    ) -> bytes:
        """As ``ObjectStore.get_bytes``."""
        if not any_bucket:
            _own_bucket(uri, self.bucket)
        if sha256 is not None:
            validation.sha256(sha256, "sha256")
        with self._lock:
            data = self._objects.get(uri)
        if data is None:
            raise ObjectNotFound(f"no object at {uri}.")
        _check_size(uri, len(data), self.max_object_bytes if max_bytes is None else max_bytes)
        if sha256 is not None:
            _verify(uri, data, sha256)
        return data

    def get_object(self, ref: common_pb2.ObjectRef, *, max_bytes: int | None = None) -> bytes:
        """As ``ObjectStore.get_object``."""
        return self.get_bytes(ref.uri, sha256=ref.sha256, max_bytes=max_bytes)

    def exists(self, uri: str) -> bool:
        """As ``ObjectStore.exists``."""
        _own_bucket(uri, self.bucket)
        with self._lock:
            return uri in self._objects

    def ensure_bucket(self) -> None:
        """Nothing to create: the bucket is a name."""

    def presigned_put(self, key: str, *, expires: timedelta = timedelta(hours=1)) -> str:
        """Raises ``Unimplemented``: nothing outside this process can reach the objects."""
        raise Unimplemented("the in-memory object store signs no URLs: run the services with an S3 store.")

    def presigned_get(self, uri: str, *, expires: timedelta = timedelta(hours=1)) -> str:
        """Raises ``Unimplemented``: nothing outside this process can reach the objects."""
        raise Unimplemented("the in-memory object store signs no URLs: run the services with an S3 store.")

    def promote(
        self, staged_uri: str, sha256: str, size_bytes: int, *, suffix: str = "", media_type: str = ""
    ) -> common_pb2.ObjectRef:
        """As ``ObjectStore.promote``."""
        return _promote(self, staged_uri, sha256, size_bytes, suffix, media_type)

    def put_at(self, uri: str, data: bytes) -> None:
        """Write ``data`` at ``uri`` as a client's presigned PUT would (tests)."""
        _own_bucket(uri, self.bucket)
        with self._lock:
            self._objects[uri] = bytes(data)
            self._written[uri] = datetime.now(UTC)

    def upload_folder(self, folder: str | os.PathLike, prefix_uri: str) -> list[str]:
        """As ``ObjectStore.upload_folder``."""
        parse_uri(prefix_uri.rstrip("/"))
        written = []
        for path in sorted(_files_under(folder)):
            uri = f"{prefix_uri.rstrip('/')}/{path.relative_to(folder).as_posix()}"
            data = path.read_bytes()
            _check_size(str(path), len(data), self.max_object_bytes)
            with self._lock:
                self._objects[uri] = data
            written.append(uri)
        return written

    def remove(self, uris: list[str]) -> None:
        """As ``ObjectStore.remove``."""
        for uri in uris:
            parse_uri(uri)
            with self._lock:
                self._objects.pop(uri, None)

    def modified_before(self, prefix_uri: str, before: datetime) -> list[str]:
        """As ``ObjectStore.modified_before``."""
        prefix = prefix_uri.rstrip("/") + "/"
        with self._lock:
            return sorted(
                uri
                for uri in self._objects
                if uri.startswith(prefix) and self._written.get(uri, datetime.now(UTC)) < before
            )

    def list_prefix(self, prefix_uri: str) -> list[str]:
        """As ``ObjectStore.list_prefix``."""
        parse_uri(prefix_uri.rstrip("/"))
        prefix = prefix_uri.rstrip("/") + "/"
        with self._lock:
            return sorted(uri[len(prefix) :] for uri in self._objects if uri.startswith(prefix))

    def download_prefix(self, prefix_uri: str, folder: str | os.PathLike) -> list[str]:
        """As ``ObjectStore.download_prefix``."""
        parse_uri(prefix_uri.rstrip("/"))
        prefix = prefix_uri.rstrip("/") + "/"
        with self._lock:
            found = {
                uri[len(prefix) :]: data for uri, data in self._objects.items() if uri.startswith(prefix)
            }
        if not found:
            raise ObjectNotFound(f"no objects under {prefix_uri}.")
        for rel, data in found.items():
            path = pathlib.Path(folder, rel)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return sorted(found)


def _own_bucket(uri: str, bucket: str) -> tuple[str, str]:
    """``parse_uri(uri)``; PermissionDenied unless the URI is in ``bucket``."""
    found, key = parse_uri(uri)
    if found != bucket:
        raise PermissionDenied(f"{uri} is outside this deployment's bucket {bucket!r}: it is not read here.")
    return found, key


def _promote(
    store: ObjectStore | MemoryStore,
    staged_uri: str,
    sha256: str,
    size_bytes: int,
    suffix: str,
    media_type: str,
) -> common_pb2.ObjectRef:
    """``promote`` for either store: check the staged bytes, write them at their content key."""
    data = store.get_bytes(staged_uri, max_bytes=size_bytes)  # ObjectTooLarge past the size announced
    if len(data) != size_bytes:
        raise IntegrityError(f"the upload holds {len(data)} bytes where {size_bytes} were announced.")
    found = content_sha256(data)
    if found != sha256:
        raise IntegrityError(f"the upload's bytes have sha256 {found}, not the {sha256} announced.")
    ref = store.put_bytes(data, suffix=suffix, media_type=media_type or "application/octet-stream")
    store.remove([staged_uri])
    return ref


def _files_under(folder: str | os.PathLike) -> list[pathlib.Path]:
    """The regular files under ``folder``, recursively. Raises InvalidArgument when it is no folder."""
    root = pathlib.Path(folder)
    validation.require(root.is_dir(), "folder", str(folder), "must be an existing folder")
    return [path for path in root.rglob("*") if path.is_file()]


def _http_client() -> urllib3.PoolManager:
    """minio's default waits 5 minutes per attempt and retries 5 times; fail in seconds instead.

    HTTPS verification uses the system's CA certificates, or ``SSL_CERT_FILE`` when set.
    """
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=_CONNECT_TIMEOUT_S, read=_READ_TIMEOUT_S),
        maxsize=_POOL_SIZE,
        cert_reqs="CERT_REQUIRED",
        retries=urllib3.Retry(
            total=_RETRIES, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504), raise_on_status=False
        ),
    )


def _check_size(what: str, size: int, limit: int) -> None:
    if size > limit:
        raise ObjectTooLarge(f"{what} is {size} bytes, over the limit of {limit} bytes.")


def _verify(uri: str, data: bytes, expected: str) -> None:
    """The one integrity check: raise IntegrityError unless ``data`` (read from ``uri``) hashes to
    ``expected``, a well-formed digest."""
    actual = content_sha256(data)
    if actual != expected:
        raise IntegrityError(
            f"the bytes at {uri} have sha256 {actual}, expected {expected}: the object is corrupt or "
            "was replaced."
        )


def _reason(exc: urllib3.exceptions.HTTPError) -> str:
    """A short cause for a connection failure: "[Errno 111] Connection refused", or the exception's class."""
    cause = getattr(exc, "reason", None) or exc
    match = re.search(r"\[Errno [^\]]+\] [^'\")]+|timed out", str(cause))
    return match.group(0) if match else type(cause).__name__

"""Bytes to and from the object store through the coordinator's presigned URLs, from the console's side:
for browsers that cannot reach the store (uploads), and for what the console shows (previews, assets).

Blocking calls (urllib); the app runs them in worker threads.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import BinaryIO
from urllib.parse import urlsplit, urlunsplit

from services.common.errors import IntegrityError
from services.common.store import addressed_sha256, content_sha256

TIMEOUT_S = 300.0


class TransferError(Exception):
    """The store refused or could not be reached; the sentence says which and names no URL (presigned
    URLs are credentials)."""


def _request(
    url: str, store_endpoint: str, method: str, data: BinaryIO | None = None
) -> urllib.request.Request:
    """A request for ``url`` sent to ``store_endpoint`` instead, when given, with the URL's Host kept."""
    parts = urlsplit(url)
    if not store_endpoint:
        return urllib.request.Request(url, data=data, method=method)
    endpoint = urlsplit(store_endpoint)
    request = urllib.request.Request(
        urlunsplit((endpoint.scheme, endpoint.netloc, parts.path, parts.query, "")), data=data, method=method
    )
    request.add_header("Host", parts.netloc)
    return request


def fetch(url: str, uri: str, store_endpoint: str, max_bytes: int) -> bytes:
    """GET a presigned ``url`` for the object ``uri``; a content-addressed URI's bytes are checked.

    Raises:
        TransferError: the store answered an error, could not be reached, or the object is over
            ``max_bytes``.
        IntegrityError: the bytes do not hash to the sha256 the URI names.
    """
    try:
        with urllib.request.urlopen(_request(url, store_endpoint, "GET"), timeout=TIMEOUT_S) as response:
            data = response.read(max_bytes + 1)
    except urllib.error.HTTPError as exc:
        raise TransferError(f"the store answered HTTP {exc.code} for {uri}") from None
    except OSError as exc:
        raise TransferError(f"the store could not be reached for {uri}: {type(exc).__name__}") from None
    if len(data) > max_bytes:
        raise TransferError(f"{uri} is larger than {max_bytes} bytes")
    expected = addressed_sha256(uri)
    if expected is not None and content_sha256(data) != expected:
        raise IntegrityError(f"the bytes of {uri} do not hash to the sha256 it names")
    return data


def put(url: str, data: BinaryIO, size: int, store_endpoint: str) -> None:
    """PUT ``size`` bytes read from ``data`` to a presigned ``url``.

    Raises:
        TransferError: the store refused it or could not be reached.
    """
    request = _request(url, store_endpoint, "PUT", data)
    request.add_header("Content-Length", str(size))
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        raise TransferError(f"the store refused the upload: HTTP {exc.code}") from None
    except OSError as exc:
        raise TransferError(f"the store could not be reached for the upload: {type(exc).__name__}") from None

"""The console's ASGI app: pages rendered on the server, live parts in plain ES modules.

    app = build_app(WebSettings())        # uvicorn serves it (services.web.server)

Routes (every one but sign-in, health and static files needs a session; every POST and PUT a CSRF token):

    GET  /signin, POST /signin, POST /signout        the API token in, a session cookie out
    GET  /jobs[?state=running]                       the person's jobs; GET /jobs/stream: their progress (SSE)
    GET  /jobs/new                                   drop a splat file, preview it, choose options, submit
    POST /api/uploads, PUT /api/uploads/{slot}       presigned URLs; the console's own upload path
    POST /api/jobs                                   SubmitJob from the form
    GET  /jobs/{id}                                  steps, ring views, errors, report, before/after in 3D
    GET  /jobs/{id}/events                           WatchJob as server-sent events (resumable: Last-Event-ID)
    GET  /jobs/{id}/objects?uri=...                  one of the job's objects, through CreateDownload
    GET  /jobs/{id}/export.html                      the comparison as one self-contained file
    POST /jobs/{id}/cancel, POST /jobs/{id}/delete
    GET  /healthz (the process), /readyz (the coordinator SERVING)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import json
import logging
import mimetypes
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from google.protobuf import json_format
from prometheus_client import CollectorRegistry, Gauge
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from tire.v1 import common_pb2, coordinator_pb2

from services.client import output_files
from services.common.errors import IntegrityError
from services.common.formats import FORMATS, WRITABLE
from services.common.validation import MAX_LABEL_VALUE_CHARS
from services.web import export
from services.web.coordinator import ApiError, Coordinator
from services.web.metrics import ConsoleMetrics, RequestRecorder
from services.web.sessions import (
    CSRF_FIELD,
    CSRF_HEADER,
    SESSION_COOKIE,
    SIGNIN_COOKIE,
    SIGNIN_TTL_S,
    Session,
    SessionBook,
    new_signin_token,
    same_token,
)
from services.web.settings import WebSettings
from services.web.transfer import TransferError, fetch, put

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
STATES = {
    name.removeprefix("JOB_STATE_").lower(): value
    for name, value in coordinator_pb2.JobState.items()
    if value != coordinator_pb2.JOB_STATE_UNSPECIFIED
}
"""The states a job list filters on, by the name the page uses ("running")."""
FINAL_STATES = frozenset(("succeeded", "failed", "cancelled"))
IMPORT_MAP = {"imports": {name: f"/vendor/{path}" for name, path in export.VENDOR_MODULES.items()}}
"""Where the pages' bare module names resolve: the viewer's packages, as the exported page has them."""
MEDIA_TYPES = {spec.extension: spec.media_type for spec in FORMATS.values()} | {".png": "image/png"}
"""What the new-job page declares for a dropped file, by its extension (the format is read from the
content by the coordinator anyway)."""
PAGE_SIZE = 50
MAX_SLOTS = 64  # uploads a session may have announced and not yet submitted
MAX_WATCHED = 50  # jobs whose progress one list page follows
MAX_OBJECT_BYTES = 2 * 2**30
UPLOAD_SPOOL_BYTES = 8 * 2**20  # an upload through the console stays in memory up to this
FILE_LABEL = "file"  # JobSpec.labels key holding the uploaded asset's file name
HEARTBEAT_S = 15.0
RETRY_S = 1.0


def build_app(
    settings: WebSettings, coordinator: Coordinator | None = None, registry: CollectorRegistry | None = None
) -> Starlette:
    """The console for ``settings``; ``coordinator`` is opened and closed with the app; its metrics go
    into ``registry`` (a fresh one when None)."""
    sessions = SessionBook(settings.session_ttl_s, settings.max_sessions)
    metrics = ConsoleMetrics(registry or CollectorRegistry(), sessions.__len__)
    console = _Console(settings, coordinator or Coordinator(settings), sessions, metrics.streams)
    # (method, path, handler); a handler may raise Refused, answered by its response.
    pages = [
        ("GET", "/healthz", console.healthz),
        ("GET", "/readyz", console.readyz),
        ("GET", "/signin", console.signin_page),
        ("POST", "/signin", console.signin),
        ("POST", "/signout", console.signout),
        ("GET", "/", console.home),
        ("GET", "/jobs", console.jobs_page),
        ("GET", "/jobs/stream", console.jobs_stream),
        ("GET", "/jobs/new", console.new_job_page),
        ("POST", "/api/uploads", console.create_upload),
        ("PUT", "/api/uploads/{slot}", console.upload_content),
        ("POST", "/api/jobs", console.submit_job),
        ("GET", "/jobs/{job_id}", console.job_page),
        ("GET", "/jobs/{job_id}/events", console.job_events),
        ("GET", "/jobs/{job_id}/objects", console.job_object),
        ("GET", "/jobs/{job_id}/export.html", console.export_comparison),
        ("POST", "/jobs/{job_id}/cancel", console.cancel_job),
        ("POST", "/jobs/{job_id}/delete", console.delete_job),
    ]
    routes = [
        *(Route(path, _answering_refusals(handler), methods=[method]) for method, path, handler in pages),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        Route("/vendor/{path:path}", console.vendor_file),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await console.coordinator.open()
        try:
            yield
        finally:
            await console.coordinator.close()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(_SecurityHeaders, policy=console.content_security_policy)
    app.add_middleware(RequestRecorder, metrics=metrics)
    return app


class Refused(Exception):
    """A request turned away before its work: ``response`` says why (sign in first, no CSRF token...)."""

    def __init__(self, response: Response):
        super().__init__(response.status_code)
        self.response = response


def _answering_refusals(handler: Callable[[Request], Awaitable[Response]]) -> Callable:
    """``handler`` with a ``Refused`` it raises answered by its response."""

    @functools.wraps(handler)
    async def route(request: Request) -> Response:
        try:
            return await handler(request)
        except Refused as refused:
            return refused.response

    return route


class _SecurityHeaders:
    """Adds the Content-Security-Policy and the other protective headers to every response."""

    def __init__(self, app, policy: str):
        self.app = app
        self.headers = {
            "content-security-policy": policy,
            "x-content-type-options": "nosniff",
            "referrer-policy": "no-referrer",
            "x-frame-options": "DENY",
            "cross-origin-opener-policy": "same-origin",
        }

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.headers.items():
                    headers.setdefault(name, value)
            await send(message)

        return await self.app(scope, receive, send_with_headers)


class _Console:
    """The routes' shared state: settings, sessions, the coordinator, templates."""

    def __init__(
        self, settings: WebSettings, coordinator: Coordinator, sessions: SessionBook, streams: Gauge
    ):
        self.settings = settings
        self.coordinator = coordinator
        self.sessions = sessions
        self.streams = streams  # open event streams, a metric
        self.templates = Jinja2Templates(directory=HERE / "templates")
        import_map = json.dumps(IMPORT_MAP, indent=2)
        self.templates.env.globals["import_map"] = import_map
        digest = base64.b64encode(hashlib.sha256(import_map.encode()).digest()).decode()
        store = f" {settings.store_origin}" if settings.store_origin else ""
        # The import map is the one inline script, allowed by its hash; Spark compiles WebAssembly and
        # runs its sorter in a worker made from a blob.
        self.content_security_policy = "; ".join(
            (
                "default-src 'none'",
                f"script-src 'self' 'wasm-unsafe-eval' 'sha256-{digest}'",
                "style-src 'self'",
                "img-src 'self' data: blob:",
                f"connect-src 'self' blob: data:{store}",
                "worker-src 'self' blob:",
                "form-action 'self'",
                "frame-ancestors 'none'",
                "base-uri 'none'",
            )
        )

    # ----- sessions and CSRF -----------------------------------------------------------------------

    def session(self, request: Request) -> Session | None:
        return self.sessions.find(request.cookies.get(SESSION_COOKIE))

    async def csrf_ok(self, request: Request, expected: str) -> bool:
        given = request.headers.get(CSRF_HEADER)
        if given is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")
        ):
            given = (await request.form()).get(CSRF_FIELD)
        return same_token(expected, given if isinstance(given, str) else None)

    async def signed_in(self, request: Request, *, api: bool = False) -> Session:
        """The request's session.

        Raises:
            Refused: no session (a page is sent to sign in; ``api`` and non-GET calls get 401), or a
                state-changing request without the session's CSRF token (403).
        """
        session = self.session(request)
        if session is not None:
            if request.method in ("POST", "PUT", "DELETE") and not await self.csrf_ok(request, session.csrf):
                raise Refused(_error(403, "CSRF", "the request carries no valid CSRF token; reload the page"))
            return session
        if api or request.method != "GET":
            raise Refused(_error(401, "UNAUTHENTICATED", "sign in first"))
        raise Refused(RedirectResponse("/signin", status_code=303))

    def render(self, request: Request, name: str, context: dict, status_code: int = 200) -> HTMLResponse:
        response = self.templates.TemplateResponse(request, name, context, status_code=status_code)
        response.headers["cache-control"] = "no-store"
        return response

    async def vendor_file(self, request: Request) -> Response:
        """One of the viewer's package files (``export.VENDOR_FILES``), from ``vendor_dir``."""
        path = request.path_params["path"]
        if path not in export.VENDOR_FILES:
            return PlainTextResponse("not found", 404)
        headers = {"cache-control": "public, max-age=86400"}
        return FileResponse(
            Path(self.settings.vendor_dir) / path, media_type="text/javascript", headers=headers
        )

    async def home(self, request: Request) -> Response:
        return RedirectResponse("/jobs", status_code=303)

    # ----- health --------------------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(self, request: Request) -> Response:
        if await self.coordinator.serving():
            return PlainTextResponse("ok")
        return PlainTextResponse(f"the coordinator at {self.coordinator.target} is not serving", 503)

    # ----- sign in and out -----------------------------------------------------------------------

    async def signin_page(self, request: Request, message: str = "", status_code: int = 200) -> Response:
        token = new_signin_token()
        response = self.render(request, "signin.html", {"csrf": token, "message": message}, status_code)
        response.set_cookie(
            SIGNIN_COOKIE,
            token,
            max_age=SIGNIN_TTL_S,
            httponly=True,
            samesite="strict",
            secure=self.settings.secure_cookies,
        )
        return response

    async def signin(self, request: Request) -> Response:
        form = await request.form()
        if not same_token(request.cookies.get(SIGNIN_COOKIE, ""), form.get(CSRF_FIELD)):
            return await self.signin_page(request, "The form expired; sign in again.", 403)
        token = str(form.get("token", "")).strip()
        if not token or len(token) > 4096:
            return await self.signin_page(request, "Paste your API token.", 400)
        try:
            info = await self.coordinator.call("Describe", common_pb2.DescribeRequest(), token)
        except ApiError as exc:
            if exc.code == "UNAUTHENTICATED":
                return await self.signin_page(request, "That token is not valid.", 401)
            return await self.signin_page(request, f"The API did not answer: {exc.message}", exc.http_status)
        session = self.sessions.open(token, info.settings.get("caller", ""))
        log.info("signed in", extra={"principal": session.principal})
        response = RedirectResponse("/jobs", status_code=303)
        response.delete_cookie(SIGNIN_COOKIE)
        response.set_cookie(
            SESSION_COOKIE,
            session.id,
            max_age=self.settings.session_ttl_s,
            httponly=True,
            samesite="strict",
            secure=self.settings.secure_cookies,
        )
        return response

    async def signout(self, request: Request) -> Response:
        session = await self.signed_in(request)
        self.sessions.close(session.id)
        response = RedirectResponse("/signin", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    # ----- the job list ----------------------------------------------------------------------------

    async def jobs_page(self, request: Request) -> Response:
        session = await self.signed_in(request)
        state = request.query_params.get("state", "")
        if state and state not in STATES:
            return _error(400, "INVALID_ARGUMENT", f"state must be one of {sorted(STATES)}, got {state!r}")
        listing = coordinator_pb2.ListJobsRequest(
            page_size=PAGE_SIZE, page_token=request.query_params.get("page", ""), state=STATES.get(state, 0)
        )
        try:
            answer = await self.coordinator.call("ListJobs", listing, session.token)
        except ApiError as exc:
            return self.api_error_page(request, session, exc)
        context = {
            "session": session,
            "jobs": [job_summary(job) for job in answer.jobs],
            "state": state,
            "states": list(STATES),
            "next_page": answer.next_page_token,
        }
        return self.render(request, "jobs.html", context)

    async def jobs_stream(self, request: Request) -> Response:
        """Server-sent ``job`` events (a job's summary) each time one of ``ids`` changes, until all end."""
        session = await self.signed_in(request, api=True)
        ids = [job_id for job_id in request.query_params.get("ids", "").split(",") if job_id][:MAX_WATCHED]
        return _event_stream(self._progress_of(session, ids), self.streams)

    async def _progress_of(self, session: Session, ids: list[str]) -> AsyncIterator[str]:
        changed: asyncio.Queue[str | None] = asyncio.Queue()

        async def follow(job_id: str) -> None:
            after = 0
            while True:
                try:
                    async for event in self.coordinator.watch(job_id, session.token, after):
                        after = event.sequence
                        await changed.put(job_id)
                    break
                except ApiError as exc:
                    if exc.code != "UNAVAILABLE":
                        break
                    await asyncio.sleep(RETRY_S)
            await changed.put(None)

        tasks = [asyncio.create_task(follow(job_id)) for job_id in ids]
        try:
            open_watches = len(tasks)
            while open_watches:
                # Every change queued by now, each job once: a burst of events costs one GetJob a job.
                woken = [await changed.get()]
                while not changed.empty():
                    woken.append(changed.get_nowait())
                open_watches -= woken.count(None)
                for job_id in dict.fromkeys(job_id for job_id in woken if job_id is not None):
                    with contextlib.suppress(ApiError):
                        request = coordinator_pb2.GetJobRequest(job_id=job_id)
                        job = (await self.coordinator.call("GetJob", request, session.token)).job
                        yield _sse("job", json.dumps(job_summary(job)))
        finally:
            for task in tasks:
                task.cancel()

    async def cancel_job(self, request: Request) -> Response:
        return await self._job_action(request, "CancelJob", coordinator_pb2.CancelJobRequest)

    async def delete_job(self, request: Request) -> Response:
        return await self._job_action(request, "DeleteJob", coordinator_pb2.DeleteJobRequest)

    async def _job_action(self, request: Request, method: str, message: type) -> Response:
        session = await self.signed_in(request)
        job_id = request.path_params["job_id"]
        try:
            await self.coordinator.call(method, message(job_id=job_id), session.token)
        except ApiError as exc:
            return JSONResponse({"error": exc.as_json()}, exc.http_status)
        if request.headers.get(CSRF_HEADER):  # a script's call: it updates the page itself
            return JSONResponse({"ok": True})
        return RedirectResponse("/jobs" if method == "DeleteJob" else f"/jobs/{job_id}", status_code=303)

    # ----- a new job ------------------------------------------------------------------------------

    async def new_job_page(self, request: Request) -> Response:
        session = await self.signed_in(request)
        try:
            info = await self.coordinator.call("Describe", common_pb2.DescribeRequest(), session.token)
        except ApiError as exc:
            return self.api_error_page(request, session, exc)
        settings = dict(info.settings)
        context = {
            "session": session,
            "defaults": {
                k.removeprefix("default."): v for k, v in settings.items() if k.startswith("default.")
            },
            "ranges": {k.removeprefix("range."): v for k, v in settings.items() if k.startswith("range.")},
            "output_formats": settings.get("output_formats", ",".join(WRITABLE)).split(","),
            "stages": {k.removeprefix("stage."): v for k, v in settings.items() if k.startswith("stage.")},
            "media_types": MEDIA_TYPES,
            "max_upload_bytes": self.settings.max_upload_bytes,
        }
        return self.render(request, "new_job.html", context)

    async def create_upload(self, request: Request) -> Response:
        """``{"files": [{name, size_bytes, sha256, media_type}]}`` -> ``{"uploads": [{slot, needs_upload,
        put_url}]}``; the browser PUTs each file to ``put_url``, or to ``/api/uploads/{slot}``."""
        session = await self.signed_in(request, api=True)
        body = await _json_body(request)
        try:
            files = [coordinator_pb2.UploadFile(**file) for file in body.get("files", [])]
        except (TypeError, ValueError) as exc:
            return _error(400, "INVALID_ARGUMENT", f"files: {exc}")
        try:
            request_message = coordinator_pb2.CreateUploadRequest(files=files)
            answer = await self.coordinator.call("CreateUpload", request_message, session.token)
        except ApiError as exc:
            return JSONResponse({"error": exc.as_json()}, exc.http_status)
        slots = session.uploads
        uploads = []
        for item in answer.uploads:
            slot = secrets.token_urlsafe(16)
            slots[slot] = (item.object, item.put_url)
            while len(slots) > MAX_SLOTS:
                slots.popitem(last=False)
            uploads.append({"slot": slot, "needs_upload": item.needs_upload, "put_url": item.put_url})
        return JSONResponse({"uploads": uploads})

    async def upload_content(self, request: Request) -> Response:
        """An announced upload's file, through the console (for a browser that cannot reach the store).
        Spooled to disk past ``UPLOAD_SPOOL_BYTES`` and hashed on the way in; sent on only when its size and
        sha256 are the ones announced."""
        session = await self.signed_in(request, api=True)
        found = session.uploads.get(request.path_params["slot"])
        if found is None:
            return _error(404, "NOT_FOUND", "no upload of this session has that slot; announce it first")
        ref, put_url = found
        limit = min(ref.size_bytes, self.settings.max_upload_bytes)
        too_large = f"the file is larger than the {limit} bytes announced (or allowed)"
        if int(request.headers.get("content-length") or 0) > limit:
            return _error(413, "INVALID_ARGUMENT", too_large)
        with tempfile.SpooledTemporaryFile(max_size=UPLOAD_SPOOL_BYTES) as spool:
            digest, size = hashlib.sha256(), 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    return _error(413, "INVALID_ARGUMENT", too_large)
                digest.update(chunk)
                spool.write(chunk)
            if (size, digest.hexdigest()) != (ref.size_bytes, ref.sha256):
                return _error(400, "INVALID_ARGUMENT", "the file's size or sha256 is not the one announced")
            spool.seek(0)
            try:
                await run_in_threadpool(put, put_url, spool, size, self.settings.store_endpoint)
            except TransferError as exc:
                return _error(503, "UNAVAILABLE", str(exc))
        return JSONResponse({"ok": True})

    async def submit_job(self, request: Request) -> Response:
        """``{"asset": [slot], "references": [slot], "options": {...}, "request_id"}`` -> ``{"id"}``."""
        session = await self.signed_in(request, api=True)
        body = await _json_body(request)
        slots = session.uploads
        refs = {}
        for part in ("asset", "references"):
            names = body.get(part)
            if not isinstance(names, list) or not names:
                return _error(400, "INVALID_ARGUMENT", f"{part}: choose a file")
            if not all(isinstance(name, str) and name in slots for name in names):
                return _error(400, "INVALID_ARGUMENT", f"{part}: upload the file first")
            refs[part] = [slots[name][0] for name in names]
        try:
            spec = job_spec(refs["asset"], refs["references"], body.get("options") or {})
        except ValueError as exc:
            return JSONResponse({"error": ApiError("INVALID_ARGUMENT", str(exc)).as_json()}, 400)
        submission = coordinator_pb2.SubmitJobRequest(
            spec=spec, request_id=str(body.get("request_id", ""))[:128]
        )
        try:
            job = (await self.coordinator.call("SubmitJob", submission, session.token)).job
        except ApiError as exc:
            return JSONResponse({"error": exc.as_json()}, exc.http_status)
        return JSONResponse({"id": job.id})

    # ----- one job ---------------------------------------------------------------------------------

    async def _job(self, session: Session, job_id: str) -> coordinator_pb2.Job:
        request = coordinator_pb2.GetJobRequest(job_id=job_id)
        return (await self.coordinator.call("GetJob", request, session.token)).job

    async def job_page(self, request: Request) -> Response:
        session = await self.signed_in(request)
        try:
            job = await self._job(session, request.path_params["job_id"])
        except ApiError as exc:
            return self.api_error_page(request, session, exc)
        report = {}
        if job.state == coordinator_pb2.JOB_STATE_SUCCEEDED and job.outputs.report.uri:
            with contextlib.suppress(ApiError, TransferError, IntegrityError, ValueError):
                report = json.loads(await self._object(session, job.id, job.outputs.report.uri))
        context = {
            "session": session,
            "job": job_summary(job),
            "spec": json_format.MessageToDict(job.spec, preserving_proto_field_name=True),
            "comparison": comparison_options(job)
            if job.state == coordinator_pb2.JOB_STATE_SUCCEEDED
            else None,
            "downloads": downloads(job),
            "figures": report_figures(report),
            "change_map": job.outputs.change_map.uri,
        }
        return self.render(request, "job.html", context)

    async def job_events(self, request: Request) -> Response:
        """WatchJob as server-sent ``job-event`` events (id: the sequence), then ``end``."""
        session = await self.signed_in(request, api=True)
        job_id = request.path_params["job_id"]
        after = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
        if not after.isdigit():
            return _error(400, "INVALID_ARGUMENT", f"after must be a sequence number, got {after!r}")

        async def events() -> AsyncIterator[str]:
            last = int(after)
            while True:
                try:
                    async for event in self.coordinator.watch(job_id, session.token, last):
                        last = event.sequence
                        data = json_format.MessageToDict(event, preserving_proto_field_name=True)
                        yield _sse("job-event", json.dumps(data), event_id=str(last))
                    yield _sse("end", "{}")
                    return
                except ApiError as exc:
                    if exc.code != "UNAVAILABLE":
                        yield _sse("api-error", json.dumps(exc.as_json()))
                        return
                    await asyncio.sleep(RETRY_S)

        return _event_stream(events(), self.streams)

    async def _object(self, session: Session, job_id: str, uri: str) -> bytes:
        request = coordinator_pb2.CreateDownloadRequest(job_id=job_id, uris=[uri])
        (item,) = (await self.coordinator.call("CreateDownload", request, session.token)).downloads
        return await run_in_threadpool(
            fetch, item.get_url, uri, self.settings.store_endpoint, MAX_OBJECT_BYTES
        )

    async def job_object(self, request: Request) -> Response:
        """The bytes of one of the job's objects (``uri``), checked against the sha256 its URI names;
        ``name`` makes it a download of that file name."""
        session = await self.signed_in(request, api=True)
        uri = request.query_params.get("uri", "")
        try:
            data = await self._object(session, request.path_params["job_id"], uri)
        except ApiError as exc:
            return JSONResponse({"error": exc.as_json()}, exc.http_status)
        except TransferError as exc:
            return _error(502, "UNAVAILABLE", str(exc))
        except IntegrityError as exc:
            return _error(502, "DATA_LOSS", str(exc))
        name = Path(request.query_params.get("name") or uri).name
        headers = {"cache-control": "private, max-age=3600"}
        if request.query_params.get("name"):
            headers["content-disposition"] = f'attachment; filename="{_safe_name(name)}"'
        media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return Response(data, media_type=media_type, headers=headers)

    async def export_comparison(self, request: Request) -> Response:
        session = await self.signed_in(request)
        try:
            job = await self._job(session, request.path_params["job_id"])
            if job.state != coordinator_pb2.JOB_STATE_SUCCEEDED:
                return _error(409, "FAILED_PRECONDITION", "only a job that succeeded has a comparison")
            options = comparison_options(job)
            sides = {}
            for side in ("before", "after"):
                sides[side] = [
                    (await self._object(session, job.id, frame["uri"]), frame["fileType"])
                    for frame in options[side]
                ]
        except ApiError as exc:
            return JSONResponse({"error": exc.as_json()}, exc.http_status)
        except (TransferError, IntegrityError) as exc:
            return _error(502, "UNAVAILABLE", str(exc))
        page = await run_in_threadpool(
            export.comparison_html,
            sides["before"],
            sides["after"],
            options["orbit"],
            options["azimuths"],
            f"TIRE job {job.id}: before and after",
            Path(self.settings.vendor_dir),
        )
        disposition = f'attachment; filename="tire-{_safe_name(job.id)}-comparison.html"'
        return HTMLResponse(page, headers={"content-disposition": disposition})

    def api_error_page(self, request: Request, session: Session, exc: ApiError) -> Response:
        context = {"session": session, "error": exc.as_json()}
        return self.render(request, "error.html", context, exc.http_status)


# ----- translation between the API and the pages --------------------------------------------------


def job_summary(job: coordinator_pb2.Job) -> dict:
    """What a list row and a page header show of a job."""
    progress = job.progress
    return {
        "id": job.id,
        "state": coordinator_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_").lower(),
        "steps_done": progress.steps_done,
        "steps_total": progress.steps_total,
        "current_step": progress.current_step,
        "ring": progress.ring,
        "rings_total": progress.rings_total,
        "queue_position": job.queue_position,
        "created_at": job.created_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S UTC"),
        "asset": job.spec.labels.get(FILE_LABEL)
        or (Path(job.spec.asset.frames[0].uri).name if job.spec.asset.frames else ""),
        "frames": len(job.spec.asset.frames),
        "error": job.error,
        "failure": json_format.MessageToDict(job.failure, preserving_proto_field_name=True),
    }


def _number(options: dict, name: str, kind: type) -> float | int:
    """``options[name]`` as ``kind``; blank means 0 (the API's "use the default")."""
    text = str(options.get(name, "") or "").strip()
    if not text:
        return kind(0)
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"spec.{name} must be a number, got {text!r}") from None


def job_spec(
    frames: list[common_pb2.ObjectRef], references: list[common_pb2.ObjectRef], options: dict
) -> coordinator_pb2.JobSpec:
    """The JobSpec the new-job form describes; blank fields are left for the coordinator's defaults.

    Raises:
        ValueError: a field is not a number; the sentence names it (the coordinator checks ranges).
    """
    spec = coordinator_pb2.JobSpec(
        asset=common_pb2.AssetRef(frames=frames),
        references=references,
        resolution=_number(options, "resolution", int),
        orbit_step_deg=_number(options, "orbit_step_deg", float),
        elevation_deg=_number(options, "elevation_deg", float),
        strength=_number(options, "strength", float),
        refine_strength=_number(options, "refine_strength", float),
        seed=_number(options, "seed", int),
        force=bool(options.get("force")),
        output_formats=[str(name) for name in options.get("output_formats") or []],
    )
    name = str(options.get("file_name") or "")[:MAX_LABEL_VALUE_CHARS]
    if name:  # the asset's own name, for the job list (the store names it by its sha256)
        spec.labels[FILE_LABEL] = name
    rings = options.get("rings", "fixed")
    if rings == "adaptive":
        spec.rings.adaptive.SetInParent()
    elif rings == "source-only":
        spec.rings.source_only.SetInParent()
    elif rings != "fixed":
        raise ValueError(f"spec.rings must be fixed, adaptive or source-only, got {rings!r}")
    return spec


def _file_type(ref: common_pb2.ObjectRef) -> str:
    """The splat format's name for a viewer ("ply", "spz"...), from the object's media type."""
    return next((name for name, spec in FORMATS.items() if spec.media_type == ref.media_type), "ply")


def comparison_options(job: coordinator_pb2.Job) -> dict:
    """What ``compare.js`` mounts: the input and the repaired asset (per time step), the job's orbit and
    its ring azimuths (0, then each ring's outer limit on both sides)."""
    spec = job.spec
    limits = list(spec.rings.fixed.limits_deg) or sorted(
        {
            max(abs(a) for a in ring.target_azimuths_deg)
            for ring in job.outputs.rings
            if ring.target_azimuths_deg
        }
    )
    azimuths = [0.0]
    for limit in limits:
        azimuths += [float(limit)] if limit >= 180 else [float(limit), -float(limit)]
    return {
        "before": [{"uri": ref.uri, "fileType": _file_type(ref)} for ref in spec.asset.frames],
        "after": [{"uri": ref.uri, "fileType": "ply"} for ref in job.outputs.repaired.frames],
        "orbit": {
            "center": list(spec.framing.center),
            "radius": spec.framing.radius,
            "elevationDeg": spec.elevation_deg,
        },
        "azimuths": azimuths,
    }


def downloads(job: coordinator_pb2.Job) -> list[dict]:
    """Each output file a person downloads (``services.client.output_files``, without the ring previews
    the page shows anyway): its name, object URI, sha256 and size."""
    return [file._asdict() for file in output_files(job, previews=False) if file.uri]


def report_figures(report: dict) -> list[tuple[str, str]]:
    """The figures of ``report.json`` a person judges a repair by, as (label, value) rows, per time step:
    the source view's PSNR and colour change, the colour change on observed and unobserved pixels, the
    Gaussians locked, kept and re-fitted, each ring's mean unobserved fraction; for 4D the colour change
    between time steps, input and output."""
    frames = report.get("frames") or []
    rows = []
    for frame in frames:
        at = f"t{frame.get('time_step', 0)} · " if len(frames) > 1 else ""
        source, observed = frame.get("source_view", {}), frame.get("observed", {})
        unobserved, gaussians = frame.get("unobserved", {}), frame.get("gaussians", {})
        candidates = [
            ("source view: foreground PSNR (dB)", source.get("foreground_psnr_db")),
            ("source view: mean ΔE", source.get("mean_delta_e")),
            ("observed pixels: mean ΔE", observed.get("mean_delta_e")),
            ("observed pixels: 95th percentile ΔE", observed.get("p95_delta_e")),
            ("unobserved pixels: share of the foreground", unobserved.get("foreground_share")),
            ("unobserved pixels: mean ΔE", unobserved.get("mean_delta_e")),
            ("Gaussians locked (seen from the source view)", gaussians.get("locked")),
            ("Gaussians kept", gaussians.get("kept")),
            ("Gaussians re-fitted", gaussians.get("resolved")),
            ("reconstruction RMS error", frame.get("reconstruction_rms_error")),
        ]
        for ring in frame.get("rings") or []:
            fractions = ring.get("unobserved_fraction") or []
            if fractions:
                mean = sum(fractions) / len(fractions)
                candidates.append((f"ring {ring.get('ring')}: mean unobserved fraction", mean))
        for label, value in candidates:
            if isinstance(value, int | float) and not isinstance(value, bool):
                rows.append((at + label, f"{value:.4g}" if isinstance(value, float) else str(value)))
    cross_time = report.get("cross_time_delta_e") or {}
    for side in ("input", "output"):
        if isinstance(cross_time.get(side), int | float):
            rows.append((f"colour change between time steps, {side} (mean ΔE)", f"{cross_time[side]:.4g}"))
    return rows


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "reason": "", "fields": []}}, status)


async def _json_body(request: Request) -> dict:
    """The request's JSON object; ``Refused`` (400) for anything else."""
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise Refused(_error(400, "INVALID_ARGUMENT", "the body must be JSON")) from None
    if not isinstance(body, dict):
        raise Refused(_error(400, "INVALID_ARGUMENT", "the body must be a JSON object"))
    return body


def _safe_name(name: str) -> str:
    return "".join(c for c in name if c.isalnum() or c in "._-")[:100] or "file"


def _sse(event: str, data: str, event_id: str = "") -> str:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {data}\n\n"


def _event_stream(events: AsyncIterator[str], open_streams: Gauge) -> StreamingResponse:
    """``events`` as ``text/event-stream``, with a comment every ``HEARTBEAT_S`` so that proxies keep
    the connection open; ``open_streams`` counts it while it is open."""

    async def with_heartbeats() -> AsyncIterator[str]:
        iterator = events.__aiter__()
        pending = asyncio.ensure_future(iterator.__anext__())
        open_streams.inc()
        try:
            while True:
                done, _ = await asyncio.wait({pending}, timeout=HEARTBEAT_S)
                if not done:
                    yield f": {time.time():.0f}\n\n"
                    continue
                try:
                    yield pending.result()
                except StopAsyncIteration:
                    return
                pending = asyncio.ensure_future(iterator.__anext__())
        finally:
            open_streams.dec()
            pending.cancel()
            with contextlib.suppress(Exception):
                await iterator.aclose()

    headers = {"cache-control": "no-store", "x-accel-buffering": "no"}
    return StreamingResponse(with_heartbeats(), media_type="text/event-stream", headers=headers)

"""The console's translations between its pages and the API, its sessions and its settings (no browser;
tests/test_web.py drives the whole console in one)."""

from __future__ import annotations

import time

import pytest
from tire.v1 import common_pb2, coordinator_pb2

from services.common.errors import ConfigError
from services.web.app import comparison_options, downloads, job_spec, report_figures
from services.web.coordinator import ApiError
from services.web.sessions import SessionBook, same_token
from services.web.settings import WebSettings
from services.web.transfer import _request

FRAME = common_pb2.ObjectRef(uri="s3://tire/inputs/a.spz", sha256="a" * 64, media_type="application/x-spz")
REFERENCE = common_pb2.ObjectRef(uri="s3://tire/inputs/b.png", sha256="b" * 64, media_type="image/png")


def test_a_blank_option_is_left_to_the_coordinators_default():
    spec = job_spec([FRAME], [REFERENCE], {"resolution": " ", "orbit_step_deg": "", "rings": "fixed"})
    assert (spec.resolution, spec.orbit_step_deg, spec.strength, spec.seed) == (0, 0.0, 0.0, 0)
    assert spec.rings.WhichOneof("mode") is None  # unset: the paper's fixed rings
    assert list(spec.asset.frames) == [FRAME] and list(spec.references) == [REFERENCE]


def test_options_become_the_spec_fields():
    options = {
        "resolution": "128",
        "orbit_step_deg": "30",
        "elevation_deg": "-10.5",
        "strength": "0.8",
        "seed": "42",
        "rings": "adaptive",
        "output_formats": ["spz", "ply"],
        "force": True,
    }
    spec = job_spec([FRAME], [REFERENCE], options)
    assert (spec.resolution, spec.orbit_step_deg, spec.elevation_deg, spec.seed) == (128, 30.0, -10.5, 42)
    assert spec.strength == pytest.approx(0.8) and spec.force
    assert spec.rings.WhichOneof("mode") == "adaptive" and list(spec.output_formats) == ["spz", "ply"]
    assert job_spec([FRAME], [REFERENCE], {"rings": "source-only"}).rings.WhichOneof("mode") == "source_only"


def test_the_uploaded_files_name_is_kept_as_a_label():
    spec = job_spec([FRAME], [REFERENCE], {"file_name": "monkey.ply"})
    assert dict(spec.labels) == {"file": "monkey.ply"}
    assert len(job_spec([FRAME], [REFERENCE], {"file_name": "a" * 999}).labels["file"]) == 256
    assert not job_spec([FRAME], [REFERENCE], {}).labels


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"resolution": "big"}, "spec.resolution"),
        ({"seed": "1.5"}, "spec.seed"),
        ({"rings": "spiral"}, "spec.rings"),
    ],
)
def test_a_bad_option_is_refused_naming_its_field(options, named):
    with pytest.raises(ValueError, match=named):
        job_spec([FRAME], [REFERENCE], options)


def finished_job() -> coordinator_pb2.Job:
    job = coordinator_pb2.Job(id="job-1", state=coordinator_pb2.JOB_STATE_SUCCEEDED)
    job.spec.asset.frames.append(FRAME)
    job.spec.rings.fixed.limits_deg.extend([20, 90, 180])
    job.spec.framing.center.extend([0.1, 0.2, 0.3])
    job.spec.framing.radius = 1.5
    job.spec.elevation_deg = -15
    repaired = common_pb2.ObjectRef(uri="s3://tire/jobs/r.ply", sha256="c" * 64, size_bytes=10)
    job.outputs.repaired.frames.append(repaired)
    job.outputs.repaired_formats.add(format="ply").asset.frames.append(repaired)
    spz = common_pb2.ObjectRef(uri="s3://tire/jobs/r.spz", sha256="d" * 64, size_bytes=5)
    job.outputs.repaired_formats.add(format="spz").asset.frames.append(spz)
    job.outputs.report.CopyFrom(common_pb2.ObjectRef(uri="s3://tire/jobs/report.json", sha256="e" * 64))
    return job


def test_the_comparison_is_the_input_and_the_repaired_asset_on_the_jobs_orbit():
    options = comparison_options(finished_job())
    assert options["before"] == [{"uri": FRAME.uri, "fileType": "spz"}]
    assert options["after"] == [{"uri": "s3://tire/jobs/r.ply", "fileType": "ply"}]
    assert options["orbit"]["center"] == pytest.approx([0.1, 0.2, 0.3])
    assert (options["orbit"]["radius"], options["orbit"]["elevationDeg"]) == (1.5, -15)
    assert options["azimuths"] == [0.0, 20.0, -20.0, 90.0, -90.0, 180.0]  # the paper's rings, both sides


def test_downloads_name_each_output_with_its_sha256():
    files = {file["name"]: file for file in downloads(finished_job())}
    assert list(files) == ["repaired.ply", "repaired.spz", "report.json"]
    assert files["repaired.spz"]["sha256"] == "d" * 64 and files["repaired.ply"]["size_bytes"] == 10


def test_the_report_figures_are_labelled_per_time_step():
    frame = {
        "time_step": 1,
        "source_view": {"foreground_psnr_db": 47.64, "mean_delta_e": 0.224},
        "gaussians": {"locked": 10805, "kept": 12868, "resolved": 12622},
        "rings": [{"ring": 1, "unobserved_fraction": [0.2, 0.4]}],
    }
    rows = dict(report_figures({"frames": [frame]}))
    assert rows["source view: foreground PSNR (dB)"] == "47.64"
    assert rows["Gaussians locked (seen from the source view)"] == "10805"
    assert rows["ring 1: mean unobserved fraction"] == "0.3"
    two = dict(
        report_figures({"frames": [frame, {**frame, "time_step": 2}], "cross_time_delta_e": {"input": 2.4}})
    )
    assert "t2 · Gaussians kept" in two and two["colour change between time steps, input (mean ΔE)"] == "2.4"
    assert report_figures({}) == []


def test_sessions_expire_are_bounded_and_never_print_their_token():
    book = SessionBook(ttl_s=0.2, max_sessions=2)
    first, second = book.open("token-1", "ann"), book.open("token-2", "bob")
    assert book.find(first.id) is first and book.find("") is None and book.find("nope") is None
    third = book.open("token-3", "cy")  # the oldest goes
    assert book.find(first.id) is None and book.find(second.id) is second and len(book) == 2
    assert "token-3" not in repr(third) and "token-3" not in str(third)
    book.close(second.id)
    assert book.find(second.id) is None
    time.sleep(0.25)
    assert book.find(third.id) is None


def test_csrf_tokens_compare_exactly():
    assert same_token("abc", "abc")
    assert not same_token("abc", "abd") and not same_token("abc", None) and not same_token("", "")


@pytest.mark.parametrize(
    "settings",
    [
        {"public_url": "localhost:8080"},
        {"store_origin": "http://x/path"},
        {"session_ttl_s": 1},
        {"port": 70000},
    ],
)
def test_bad_settings_are_refused_at_start(settings):
    with pytest.raises(ConfigError, match=next(iter(settings))):
        WebSettings(**settings)


def test_cookies_are_secure_behind_https():
    assert WebSettings(public_url="https://tire.example.com").secure_cookies
    assert not WebSettings(public_url="http://127.0.0.1:8080").secure_cookies


def test_requests_to_the_store_keep_the_presigned_host():
    url = "http://localhost:9000/tire/staging/x.ply?X-Amz-Signature=abc"
    direct = _request(url, "", "GET")
    assert direct.full_url == url and not direct.has_header("Host")
    inside = _request(url, "http://minio:9000", "GET")
    assert inside.full_url == "http://minio:9000/tire/staging/x.ply?X-Amz-Signature=abc"
    assert inside.get_header("Host") == "localhost:9000"


def test_api_errors_map_to_http_statuses():
    assert ApiError("INVALID_ARGUMENT", "bad").http_status == 400
    assert ApiError("NOT_FOUND", "no").http_status == 404
    assert ApiError("RESOURCE_EXHAUSTED", "later").http_status == 429
    assert ApiError("INTERNAL", "oops").http_status == 502
    error = ApiError("INVALID_ARGUMENT", "bad", "INVALID_FIELD", (("spec.resolution", "too big"),))
    assert error.as_json()["fields"] == [{"field": "spec.resolution", "description": "too big"}]

"""The web console in a real browser (Debian's Chromium through Playwright), against `tire up`'s local
stack: sign in, repair the monkey from the new-job page, watch it to the end, compare before and after in
3D, download the outputs; and what must be refused: a malformed file, another principal's job, a form
without its CSRF token. Screenshots of each page go to out/test-screenshots/console/.
"""

from __future__ import annotations

import hashlib
import re
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from prometheus_client.parser import text_string_to_metric_families

from services.coordinator.auth import new_token, token_entry
from services.testing.browser import chromium

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[1]
MONKEY, FRONT = ROOT / "samples" / "monkey_lgm.ply", ROOT / "samples" / "monkey_front.png"
SCREENSHOTS = ROOT / "out" / "test-screenshots" / "console"
JOB_TIMEOUT_MS = 240_000
VIEWPORT = {"width": 1280, "height": 900}


@dataclass(frozen=True)
class Console:
    url: str
    token: str
    other_token: str  # a second principal's
    store_origin: str
    metrics_url: str
    log: Path


@pytest.fixture(scope="module")
def console(tmp_path_factory, tire_up):
    """`tire up` with its web console; a second principal added to the coordinator's tokens file."""
    state = tmp_path_factory.mktemp("console")
    with tire_up(state) as (_, _, printed):
        url, metrics = re.search(r"web console\s+(http://\S+)\s+metrics (http://\S+)", printed).groups()
        store = re.search(r"The store: endpoint (http://\S+),", printed).group(1)
        other = new_token()
        tokens = state / "tokens"
        tokens.write_text(tokens.read_text() + token_entry(other, "other") + "\n")
        yield Console(url, (state / "token").read_text().strip(), other, store, metrics, state / "web.log")


@pytest.fixture(scope="module")
def browser():
    with chromium() as running:
        yield running


def signed_in(browser, console: Console, token: str | None = None):
    """A fresh browser context (its own cookies) signed in with ``token`` (the stack's by default)."""
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    page = context.new_page()
    page.goto(f"{console.url}/signin")
    page.fill("#token", token or console.token)
    page.click("button[type=submit]")
    page.wait_for_url(f"{console.url}/jobs")
    return context, page


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def canvas_pixels(locator) -> np.ndarray:
    """What an element shows, ``[H, W, 3]`` uint8, from a screenshot of it."""
    path = SCREENSHOTS / "_element.png"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    locator.screenshot(path=str(path))
    return np.asarray(Image.open(path).convert("RGB"))


SMALL = {"resolution": "64", "orbit_step_deg": "45", "strength": "1", "refine_strength": "0.3", "seed": "7"}
"""A job of seconds: 64 pixels, every 45 degrees."""


def submit_monkey(
    page, console: Console, asset: Path = MONKEY, options: dict = SMALL, reference: Path = FRONT
) -> None:
    """Fill the new-job page with a job of ``asset`` (blank options: the defaults) and submit it."""
    page.goto(f"{console.url}/jobs/new")
    page.set_input_files("#asset", str(asset))
    page.set_input_files("#reference", str(reference))
    for name, value in options.items():
        page.fill(f"input[name={name}]", value)
    page.click("#submit")


def unseen_reference(folder: Path) -> Path:
    """The monkey's front view in bytes the store has not seen (uploads are content-addressed: bytes it
    holds already are not sent again)."""
    reference = folder / "front.png"
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", f"{time.time_ns()}")
    Image.open(FRONT).save(reference, pnginfo=text)
    return reference


def test_sign_in_needs_a_valid_token(browser, console):
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.goto(f"{console.url}/jobs")
    assert page.url == f"{console.url}/signin"  # not signed in: sent to sign in
    shot(page, "signin")
    page.fill("#token", "not-a-token")
    page.click("button[type=submit]")
    assert "That token is not valid." in page.inner_text(".error")
    cookies = {cookie["name"]: cookie for cookie in context.cookies()}
    assert "tire_session" not in cookies
    context.close()

    context, page = signed_in(browser, console)
    assert page.inner_text(".who") == "local"
    session = next(cookie for cookie in context.cookies() if cookie["name"] == "tire_session")
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    assert console.token not in session["value"]
    context.close()


def test_the_monkey_repaired_from_the_browser(browser, console, tmp_path):
    context, page = signed_in(browser, console)
    store_puts, console_puts = [], []
    page.on(
        "requestfinished",
        lambda request: (
            request.method == "PUT"
            and (store_puts if request.url.startswith(console.store_origin) else console_puts).append(
                request.url
            )
        ),
    )

    # The dropped asset shows in 3D before anything is submitted.
    started = time.monotonic()
    page.goto(f"{console.url}/jobs/new")
    page.set_input_files("#asset", str(MONKEY))
    page.wait_for_selector("#preview[data-ready='1']", timeout=60_000)
    preview_s = time.monotonic() - started
    pixels = canvas_pixels(page.locator("#preview canvas").first)
    assert (np.abs(pixels.astype(int) - pixels[0, 0]).sum(axis=2) > 30).mean() > 0.05, "blank preview"
    shot(page, "new-job")

    submit_monkey(page, console, reference=unseen_reference(tmp_path))
    page.wait_for_url(re.compile(r".*/jobs/job-[0-9a-f]+$"), timeout=60_000)
    job_id = page.url.rsplit("/", 1)[1]
    assert store_puts and not console_puts  # straight to the store (CORS), not through the console
    page.wait_for_selector("#state:has-text('succeeded')", timeout=JOB_TIMEOUT_MS)
    page.wait_for_selector("#compare[data-ready='1']", timeout=120_000)
    shot(page, "job")

    # Every ring's inpainted views, the report's figures and the change map are on the page.
    assert page.locator("#rings img").count() >= 6
    assert page.locator("table.figures tr").count() >= 8
    assert "source view: foreground PSNR (dB)" in page.inner_text("table.figures")
    assert page.locator("img.change-map").evaluate("image => image.naturalWidth") > 0

    # Before and after: both canvases show the monkey; the repair changed its back more than its front.
    canvases = page.locator("#compare canvas")
    assert canvases.count() >= 2
    difference = {}
    for azimuth in ("0", "180"):
        page.locator(f"#compare button[data-azimuth='{azimuth}']").click()
        page.evaluate("() => window.tireComparison.settled()")  # sorted and drawn at the new camera
        before, after = canvas_pixels(canvases.nth(0)), canvas_pixels(canvases.nth(1))
        for side in (before, after):
            assert (np.abs(side.astype(int) - side[0, 0]).sum(axis=2) > 30).mean() > 0.05, "blank canvas"
        difference[azimuth] = np.abs(before.astype(int) - after.astype(int)).mean()
        shot(page, f"compare-{azimuth}")
    assert difference["180"] > difference["0"], difference

    # Each download is the file the job wrote: its sha256 is the one the page shows.
    links = page.locator("table.downloads a")
    assert links.count() >= 4
    for index in range(links.count()):
        link = links.nth(index)
        with page.expect_download() as download:
            link.click()
        data = Path(download.value.path()).read_bytes()
        assert hashlib.sha256(data).hexdigest() == link.get_attribute("data-sha256")

    # The exported comparison is one file that shows both assets with the network cut off.
    with page.expect_download() as download:
        page.click("a[href$='/export.html']")
    exported = tmp_path / download.value.suggested_filename
    assert exported.suffix == ".html"
    download.value.save_as(exported)
    offline = browser.new_context(viewport=VIEWPORT)
    local = ("file:", "blob:", "data:")  # the file itself and what it unpacks in the page
    offline.route(
        "**/*", lambda route: route.continue_() if route.request.url.startswith(local) else route.abort()
    )
    shared = offline.new_page()
    shared.goto(exported.as_uri())
    shared.wait_for_selector("[data-ready='1']", timeout=120_000)
    assert shared.locator("canvas").count() >= 2
    shot(shared, "export")
    offline.close()

    # The list shows it succeeded; the state filter finds it; deleting it removes it.
    page.goto(f"{console.url}/jobs?state=succeeded")
    row = page.locator(f"tr[data-job='{job_id}']")
    assert row.get_attribute("data-state") == "succeeded"
    shot(page, "jobs")
    assert row.locator("td").nth(1).inner_text() == "monkey_lgm.ply"  # the name it was uploaded with
    page.goto(f"{console.url}/jobs?state=failed")
    assert page.locator(f"tr[data-job='{job_id}']").count() == 0
    page.goto(f"{console.url}/jobs")
    page.locator(f"tr[data-job='{job_id}'] button:has-text('Delete')").click()
    page.wait_for_url(f"{console.url}/jobs")
    assert page.locator(f"tr[data-job='{job_id}']").count() == 0
    print(f"\nthe monkey showed in the new-job preview {preview_s:.1f} s after the page was opened")
    context.close()


def test_the_job_list_follows_a_running_job_live(browser, console):
    context, page = signed_in(browser, console)
    submit_monkey(page, console, options={"seed": "7"})  # the default orbit: a job long enough to watch
    page.wait_for_url(re.compile(r".*/jobs/job-[0-9a-f]+$"), timeout=60_000)
    job_id = page.url.rsplit("/", 1)[1]
    page.goto(f"{console.url}/jobs")
    row = page.locator(f"tr[data-job='{job_id}']")
    assert row.get_attribute("data-state") in ("queued", "running")
    # No reload: the row's state and progress bar change as the job's events arrive.
    page.wait_for_selector(f"tr[data-job='{job_id}'][data-state='succeeded']", timeout=JOB_TIMEOUT_MS)
    bar = row.locator("progress")
    assert float(bar.get_attribute("value") or bar.evaluate("bar => bar.value")) > 0
    assert row.locator(".state").inner_text() == "succeeded"
    context.close()


def test_a_4d_job_compares_time_step_by_time_step(browser, console):
    folder = ROOT / "samples" / "blob4d"
    context, page = signed_in(browser, console)
    page.goto(f"{console.url}/jobs/new")
    page.set_input_files("#asset", sorted(str(path) for path in folder.glob("*.ply")))
    page.set_input_files("#reference", sorted(str(path) for path in folder.glob("*.png")))
    for name, value in SMALL.items():
        page.fill(f"input[name={name}]", value)
    page.click("#submit")
    page.wait_for_url(re.compile(r".*/jobs/job-[0-9a-f]+$"), timeout=60_000)
    page.wait_for_selector("#state:has-text('succeeded')", timeout=JOB_TIMEOUT_MS)
    page.wait_for_selector("#compare[data-ready='1']", timeout=120_000)
    assert page.locator("#compare button:has-text('Play')").count() == 1
    slider = page.locator("#compare input[type=range]")
    assert slider.get_attribute("max") == "3"  # four time steps
    first = canvas_pixels(page.locator("#compare canvas").nth(1))
    page.evaluate("window.tireComparison.setTime(3)")
    page.wait_for_selector("#compare[data-time='3']")
    page.evaluate("() => window.tireComparison.settled()")
    assert np.abs(canvas_pixels(page.locator("#compare canvas").nth(1)).astype(int) - first).mean() > 0.5
    shot(page, "job-4d")
    # The report says what the repair did to the colour across time, input against output.
    assert "colour change between time steps, output (mean ΔE)" in page.inner_text("table.figures")
    assert page.locator("table.downloads a", has_text="repaired_03.ply").count() == 1
    context.close()


def test_uploads_go_through_the_console_when_the_store_is_out_of_reach(browser, console, tmp_path):
    reference = unseen_reference(tmp_path)
    context, page = signed_in(browser, console)
    context.route(f"{console.store_origin}/**", lambda route: route.abort())
    console_puts = []
    page.on("requestfinished", lambda request: request.method == "PUT" and console_puts.append(request.url))
    submit_monkey(page, console, reference=reference)
    page.wait_for_url(re.compile(r".*/jobs/job-[0-9a-f]+$"), timeout=60_000)
    assert any("/api/uploads/" in url for url in console_puts)
    context.close()


def test_a_malformed_file_is_refused_with_a_sentence_and_makes_no_job(browser, console, tmp_path):
    broken = tmp_path / "broken.ply"
    broken.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 99\nend_header\n" + b"\0" * 40)
    context, page = signed_in(browser, console)
    jobs_before = page.locator("tr[data-job]").count()
    submit_monkey(page, console, asset=broken)
    page.wait_for_selector("#form-error:not([hidden])", timeout=60_000)
    message = page.inner_text("#form-error")
    assert "INVALID_ARGUMENT" in message and "broken" not in page.url
    assert page.locator("#preview[data-error]").count() == 1  # the preview said so too
    shot(page, "malformed")
    page.goto(f"{console.url}/jobs")
    assert page.locator("tr[data-job]").count() == jobs_before
    context.close()


def test_another_principal_sees_none_of_the_jobs(browser, console):
    context, page = signed_in(browser, console)
    job_ids = [row.get_attribute("data-job") for row in page.locator("tr[data-job]").all()]
    assert job_ids
    context.close()

    context, page = signed_in(browser, console, console.other_token)
    assert page.inner_text(".who") == "other"
    assert page.locator("tr[data-job]").count() == 0
    response = page.goto(f"{console.url}/jobs/{job_ids[0]}")
    assert response.status == 404
    response = page.request.get(f"{console.url}/jobs/{job_ids[0]}/events")
    assert response.status == 200 and "NOT_FOUND" in response.text()
    context.close()


def test_forms_without_their_csrf_token_are_refused(browser, console):
    context, page = signed_in(browser, console)
    job_id = page.locator("tr[data-job]").first.get_attribute("data-job")
    refused = page.request.post(f"{console.url}/jobs/{job_id}/delete", form={"csrf": "guessed"})
    assert refused.status == 403
    refused = page.request.post(
        f"{console.url}/api/jobs", data="{}", headers={"content-type": "application/json"}
    )
    assert refused.status == 403
    page.reload()
    assert page.locator(f"tr[data-job='{job_id}']").count() == 1  # not deleted

    # Signing in needs the sign-in form's own token too (another site cannot sign a visitor in).
    fresh = browser.new_context()
    answer = fresh.request.post(f"{console.url}/signin", form={"token": console.token, "csrf": "x"})
    assert answer.status == 403
    # The console serves the viewer's package files, and nothing else of the packages.
    assert page.request.get(f"{console.url}/vendor/three/build/three.core.js").status == 200
    assert page.request.get(f"{console.url}/vendor/three/package.json").status == 404
    assert page.request.get(f"{console.url}/vendor/../../pyproject.toml").status == 404
    # Every page carries the Content-Security-Policy.
    policy = page.request.get(f"{console.url}/jobs").headers["content-security-policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    fresh.close()
    context.close()


def test_requests_are_counted_and_logged_by_route_without_ids_or_tokens(browser, console):
    context, page = signed_in(browser, console)
    job_id = "job-5ca1ab1e0000"
    assert page.goto(f"{console.url}/jobs/{job_id}").status == 404
    context.close()
    with urllib.request.urlopen(console.metrics_url, timeout=10) as response:
        families = {
            family.name: family for family in text_string_to_metric_families(response.read().decode())
        }
    requests = {
        (sample.labels["method"], sample.labels["route"], sample.labels["code"]): sample.value
        for sample in families["tire_web_requests"].samples
        if sample.name == "tire_web_requests_total"
    }
    assert requests[("GET", "/jobs/{job_id}", "404")] >= 1
    assert requests[("POST", "/signin", "303")] >= 1
    assert not any(job_id in route for _, route, _ in requests)  # templates, not paths
    assert families["tire_web_sessions"].samples[0].value >= 1
    log = console.log.read_text()
    assert '"route": "/jobs/{job_id}"' in log
    assert console.token not in log and console.other_token not in log and job_id not in log

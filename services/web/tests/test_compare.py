"""The 3D comparison (``static/compare.js``) and preview (``static/viewer.js``) in a real browser.

The comparison is driven as exported (``export.comparison_html``), opened from ``file://`` with every
request that is not ``file:``, ``blob:`` or ``data:`` aborted; the preview is served as the console
serves it, under the console's Content-Security-Policy. Pictures are element screenshots of the
canvases, compared with numpy and with our own rasterizer's renders; each state is saved under
``out/test-screenshots/compare/`` to look at.

The "after" asset is the LGM monkey with its back half (Gaussians behind the orbit's centre, z < c_z:
the front faces +z) recoloured green: the same as "before" from the front, plainly not from behind.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.common.cameras import orbit_cameras
from services.common.formats import write_splats
from services.common.gaussians import Gaussians, read_ply, recolour, write_ply
from services.common.rasterizer import rasterize
from services.testing.browser import chromium
from services.web.export import STATIC_DIR, comparison_html
from services.web.settings import VENDOR_DIR

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
MONKEY = REPO / "samples" / "monkey_lgm.ply"
SCREENSHOTS = REPO / "out" / "test-screenshots" / "compare"
ORBIT = {"center": [0.0496, -0.0247, -0.0093], "radius": 1.5429, "elevationDeg": 0.0}  # fit_framing's
AZIMUTHS = [0.0, 20.0, -20.0, 90.0, -90.0, 180.0]
VIEWPORT = {"width": 688, "height": 640}  # each view 320 x 320 pixels inside its 1-pixel border
SIDE = 320
GREEN = (0.1, 0.8, 0.1)
CONSOLE_IMPORT_MAP = {
    "imports": {
        "three": "/vendor/three/build/three.module.js",
        "three/addons/": "/vendor/three/examples/jsm/",
        "@sparkjsdev/spark": "/vendor/@sparkjsdev/spark/dist/spark.module.min.js",
    }
}
READY = "() => { const r = document.getElementById('{id}'); return r.dataset.ready || r.dataset.error; }"
TRACK_CSP = """document.addEventListener("securitypolicyviolation", (event) => {
  (window.__csp = window.__csp || []).push(`${event.effectiveDirective} ${event.blockedURI}`);
});"""
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def browser():
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with chromium() as launched:
        yield launched
    (SCREENSHOTS / "timings.json").write_text(json.dumps(TIMINGS, indent=2))


@pytest.fixture(scope="module")
def monkey() -> Gaussians:
    return read_ply(MONKEY)


def back_recoloured(gaussians: Gaussians) -> Gaussians:
    back = gaussians.means[:, 2] < ORBIT["center"][2]
    return recolour(gaussians, np.tile(GREEN, (len(gaussians), 1)), which=back)


class Tab:
    """A page, the requests it tried that left the machine, and the CSP violations it reported."""

    def __init__(self, browser, root_id: str):
        self.context = browser.new_context(viewport=VIEWPORT)
        self.root_id = root_id
        self.blocked: list[str] = []
        self.messages: list[str] = []
        self.page = self.context.new_page()
        self.page.add_init_script(TRACK_CSP)
        self.page.on("console", lambda message: self.messages.append(message.text))
        self.page.on("pageerror", lambda error: self.messages.append(f"page error: {error}"))

    def offline(self) -> Tab:
        def route(request_route):
            if request_route.request.url.split(":", 1)[0] in ("file", "blob", "data"):
                request_route.continue_()
            else:
                self.blocked.append(request_route.request.url)
                request_route.abort()

        self.context.route("**/*", route)
        return self

    def open(self, url: str, name: str) -> dict:
        """Goes to ``url``, waits for the mount's ready or error; returns the root's data attributes."""
        self.page.goto(url)
        self.page.wait_for_function(READY.replace("{id}", self.root_id), timeout=60_000)
        # Seconds from the start of navigation to the mount's ready (or error), by the page's clock.
        TIMINGS[name] = round(self.page.evaluate("() => performance.now()") / 1000, 2)
        return self.dataset()

    def dataset(self) -> dict:
        return self.page.evaluate(f"() => ({{...document.getElementById('{self.root_id}').dataset}})")

    def settle(self, controller: str = "window.tireComparison") -> None:
        self.page.evaluate(f"() => {controller}.settled()")

    def pixels(self, selector: str, name: str) -> np.ndarray:
        """The element's picture, ``[H, W, 3]`` uint8, saved as ``name``.png."""
        box = self.page.locator(selector).bounding_box()  # whole pixels: a box may start at y = 140.5
        clip = {key: round(box[key]) for key in ("x", "y", "width", "height")}
        png = self.page.screenshot(clip=clip)
        (SCREENSHOTS / f"{name}.png").write_bytes(png)
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))

    def views(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        self.settle()
        return (
            self.pixels(".tc-view-before canvas", f"{name}-before"),
            self.pixels(".tc-view-after canvas", f"{name}-after"),
        )

    def csp_violations(self) -> list[str]:
        reported = self.page.evaluate("() => window.__csp || []")
        return reported + [text for text in self.messages if "Content Security Policy" in text]

    def page_errors(self) -> list[str]:
        return [text for text in self.messages if text.startswith("page error")]

    def close(self) -> None:
        self.context.close()


def export(tmp_path: Path, name: str, before: list[bytes], after: list[bytes], orbit=ORBIT) -> Path:
    page = comparison_html(
        [(data, "ply") for data in before],
        [(data, "ply") for data in after],
        orbit,
        AZIMUTHS,
        f"Test: {name}",
        VENDOR_DIR,
    )
    path = tmp_path / f"{name}.html"
    path.write_text(page, encoding="utf-8")
    return path


def asset_mask(picture: np.ndarray) -> np.ndarray:
    """``[H, W]`` bool: pixels that are not the white background."""
    return (255 - picture.astype(np.int16)).max(axis=-1) > 40


def differing(a: np.ndarray, b: np.ndarray) -> float:
    """The share of pixels whose colours differ plainly."""
    return float((np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=-1) > 60).mean())


def green(picture: np.ndarray) -> np.ndarray:
    r, g, b = (picture[..., i].astype(np.int16) for i in range(3))
    return (g > r + 60) & (g > b + 60)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def our_render(gaussians: Gaussians, orbit: dict, azimuth: float, name: str) -> np.ndarray:
    """``[SIDE, SIDE, 3]`` uint8 from the CPU rasterizer at the job's view, on white; saved."""
    cameras = orbit_cameras(
        [azimuth], SIDE, SIDE, orbit["elevationDeg"], orbit["radius"], center=orbit["center"]
    )
    rgb = rasterize(gaussians, cameras, background=(1.0, 1.0, 1.0)).rgb[0]
    picture = (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)
    Image.fromarray(picture).save(SCREENSHOTS / f"{name}.png")
    return picture


@pytest.fixture(scope="module")
def comparison(browser, monkey, tmp_path_factory):
    """The monkey against its back-recoloured copy, exported and opened offline."""
    path = export(
        tmp_path_factory.mktemp("export"),
        "monkey",
        [MONKEY.read_bytes()],
        [write_ply(back_recoloured(monkey), "lgm")],
    )
    tab = Tab(browser, "tc-root").offline()
    dataset = tab.open(path.as_uri(), "comparison, 2 x 36k splats: to ready (s)")
    assert dataset.get("ready") == "1", dataset
    yield tab
    assert tab.blocked == [], "the exported file reached for the network"
    assert tab.csp_violations() == [] and tab.page_errors() == []
    tab.close()


def reset(tab: Tab, mode: str = "side-by-side", azimuth: float = 0.0) -> None:
    tab.page.click(f".tc-mode[data-mode='{mode}']")
    tab.page.click(f".tc-azimuth[data-azimuth='{azimuth:g}']")


def test_both_views_show_the_monkey_upright_from_the_front_as_our_renders_do(comparison, monkey):
    reset(comparison)
    before, after = comparison.views("azimuth-0")
    assert before.shape[:2] == (SIDE, SIDE)
    for picture in (before, after):
        assert 0.15 < asset_mask(picture).mean() < 0.6  # the asset fills the view, with a margin
    front = our_render(monkey, ORBIT, 0.0, "ours-azimuth-0")
    back = our_render(monkey, ORBIT, 180.0, "ours-azimuth-180")
    # Same camera, same convention: the silhouettes overlap, and the front looks like our front.
    assert iou(asset_mask(before), asset_mask(front)) > 0.85
    assert differing(before, front) < 0.5 * differing(before, back)


def test_a_back_only_change_shows_from_behind_not_from_the_front(comparison):
    reset(comparison, azimuth=0.0)
    before, after = comparison.views("recoloured-back-azimuth-0")
    front = differing(before, after)
    assert front < 0.015  # measured 0.0075: the tail's tip, behind the centre, shows beside the body
    reset(comparison, azimuth=180.0)
    before, after = comparison.views("recoloured-back-azimuth-180")
    back = differing(before, after)
    assert back > 0.05 and back > 5 * front  # measured 0.089: the back of the head and the tail
    assert green(after).mean() > 0.05 and green(before).mean() < 0.001


def test_azimuth_buttons_move_both_views_alike_to_the_jobs_views(comparison, monkey):
    reset(comparison, azimuth=0.0)
    front = comparison.views("buttons-azimuth-0")
    comparison.page.click(".tc-azimuth[data-azimuth='90']")
    assert comparison.page.get_attribute(".tc-azimuth[data-azimuth='90']", "aria-pressed") == "true"
    side = comparison.views("buttons-azimuth-90")
    for was, now in zip(front, side, strict=True):
        assert iou(asset_mask(was), asset_mask(now)) < 0.7  # the picture changed...
    assert iou(asset_mask(side[0]), asset_mask(side[1])) > 0.95  # ...the same way in both views
    # ...to where our renderer's camera at azimuth 90 stands (+x), not its mirror at -90.
    ours, mirror = (our_render(monkey, ORBIT, azimuth, f"ours-azimuth-{azimuth:g}") for azimuth in (90, -90))
    assert iou(asset_mask(side[0]), asset_mask(ours)) > 0.85
    assert iou(asset_mask(side[0]), asset_mask(mirror)) < 0.5


def test_dragging_in_one_view_orbits_both(comparison):
    reset(comparison, azimuth=0.0)
    start = comparison.views("drag-start")
    box = comparison.page.locator(".tc-view-before canvas").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    comparison.page.mouse.move(x, y)
    comparison.page.mouse.down()
    comparison.page.mouse.move(x + 60, y + 10, steps=2)
    comparison.page.mouse.up()
    end = comparison.views("drag-end")
    for was, now in zip(start, end, strict=True):
        assert differing(was, now) > 0.05
    assert iou(asset_mask(end[0]), asset_mask(end[1])) > 0.95
    assert comparison.page.locator(".tc-azimuth[aria-pressed='true']").count() == 0


def test_the_split_slider_moves_the_border_between_before_and_after(comparison):
    reset(comparison, mode="split", azimuth=180.0)
    assert comparison.page.locator(".tc-view-after").bounding_box()["width"] == SIDE + 2
    divider = comparison.page.locator(".tc-divider")
    stage = comparison.page.locator(".tc-stage").bounding_box()
    fractions = {}
    for share in (0.2, 0.8):
        handle = divider.bounding_box()
        comparison.page.mouse.move(handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2)
        comparison.page.mouse.down()
        comparison.page.mouse.move(
            stage["x"] + share * stage["width"], handle["y"] + handle["height"] / 2, steps=3
        )
        comparison.page.mouse.up()
        comparison.settle()
        picture = comparison.pixels(".tc-stage", f"split-{share:.1f}")
        middle = green(picture[:, int(0.3 * picture.shape[1]) : int(0.7 * picture.shape[1])])
        fractions[share] = float(middle.mean())
        assert float(divider.get_attribute("aria-valuenow")) == pytest.approx(100 * share, abs=2)
    # The middle band is after (green back) with the divider at 20%, before at 80%.
    assert fractions[0.2] > 0.1 and fractions[0.8] < 0.001, fractions


def test_toggle_flips_between_before_and_after(comparison):
    reset(comparison, mode="toggle", azimuth=180.0)
    comparison.settle()
    shown = comparison.page.evaluate("() => window.tireComparison.showing()")
    first = comparison.pixels(".tc-stage", f"toggle-{shown}")
    comparison.page.click(".tc-flip")
    assert comparison.page.evaluate("() => window.tireComparison.showing()") != shown
    comparison.settle()
    flipped = comparison.pixels(".tc-stage", "toggle-flipped")
    assert (green(first).mean() < 0.001) == (shown == "before")
    assert differing(first, flipped) > 0.05
    comparison.page.keyboard.press("t")  # the key flips back
    assert comparison.page.evaluate("() => window.tireComparison.showing()") == shown


def test_a_4d_pair_steps_through_time_together(browser, monkey, tmp_path):
    shifted = Gaussians(
        means=monkey.means + np.float32([0.25, 0.0, 0.0]),
        log_scales=monkey.log_scales,
        quats=monkey.quats,
        opacity_logits=monkey.opacity_logits,
        sh=monkey.sh,
    )
    frames = [write_ply(monkey, "lgm"), write_ply(shifted, "lgm")]
    after = [write_ply(back_recoloured(monkey), "lgm"), write_ply(back_recoloured(shifted), "lgm")]
    tab = Tab(browser, "tc-root").offline()
    try:
        # An orbit without a radius (no framing recorded): fitted to both time steps, seen from above.
        path = export(tmp_path, "4d", frames, after, orbit={"elevationDeg": -30.0})
        dataset = tab.open(path.as_uri(), "4D, 2 x 2 frames: to ready (s)")
        assert dataset.get("ready") == "1", dataset
        slider = tab.page.locator("input.tc-time")
        assert slider.is_visible() and slider.get_attribute("aria-label") == "Time step"
        first = tab.views("4d-time-0")
        for picture in first:
            assert 0.1 < asset_mask(picture).mean() < 0.6  # framed from the bounds
        slider.focus()
        tab.page.keyboard.press("ArrowRight")
        assert tab.dataset()["time"] == "1"
        second = tab.views("4d-time-1")
        for was, now in zip(first, second, strict=True):
            assert differing(was, now) > 0.05
        tab.page.click(".tc-play")  # plays: the time step moves on by itself
        tab.page.wait_for_function("() => document.getElementById('tc-root').dataset.time === '0'")
        tab.page.click(".tc-play")
        assert tab.page.get_attribute(".tc-play", "aria-pressed") == "false"
        assert tab.blocked == [] and tab.csp_violations() == [] and tab.page_errors() == []
    finally:
        tab.close()


def test_an_unreadable_asset_says_so_in_data_error(browser, tmp_path):
    corrupt = MONKEY.read_bytes()[:100_000]  # the header promises 36,295 splats
    tab = Tab(browser, "tc-root").offline()
    try:
        dataset = tab.open(
            export(tmp_path, "corrupt", [MONKEY.read_bytes()], [corrupt]).as_uri(),
            "corrupt asset: to error (s)",
        )
        assert "ready" not in dataset
        assert dataset["error"].startswith("After: not a readable ply file")
        assert tab.page.locator(".tc-error[role='alert']").inner_text() == dataset["error"]
        assert tab.page.locator("canvas").count() == 0
        assert tab.blocked == []
    finally:
        tab.close()


def console_policy(import_map: str) -> str:
    """The live console's Content-Security-Policy (services/web/app.py), for a page with this import map."""
    digest = base64.b64encode(hashlib.sha256(import_map.encode()).digest()).decode()
    return "; ".join(
        (
            "default-src 'none'",
            f"script-src 'self' 'wasm-unsafe-eval' 'sha256-{digest}'",
            "style-src 'self'",
            "img-src 'self' data: blob:",
            "connect-src 'self' blob: data:",
            "worker-src 'self' blob:",
            "base-uri 'none'",
        )
    )


PREVIEW_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Preview</title>
<link rel="stylesheet" href="/static/compare.css"><link rel="stylesheet" href="/preview.css">
<script type="importmap">{import_map}</script>
<script type="module" src="/preview.js"></script>
</head><body><div id="preview"></div></body></html>
"""

# As the new-job page does: the dropped file's bytes as a blob: URL, framed from its bounds.
PREVIEW_SCRIPT = """import { mountViewer } from "/static/viewer.js";
const bytes = await (await fetch("/asset.spz")).arrayBuffer();
const url = URL.createObjectURL(new Blob([bytes]));
window.tireViewer = mountViewer(document.getElementById("preview"), { url, fileType: "spz" });
"""


def test_the_preview_frames_a_dropped_spz_upright_under_the_consoles_policy(browser, monkey):
    import_map = json.dumps(CONSOLE_IMPORT_MAP, indent=2)
    files = {
        "/": (PREVIEW_PAGE.replace("{import_map}", import_map).encode(), "text/html"),
        "/preview.js": (PREVIEW_SCRIPT.encode(), "text/javascript"),
        "/preview.css": (f"#preview {{ width: {SIDE + 2}px; }}".encode(), "text/css"),
        "/asset.spz": (write_splats(monkey, "spz"), "application/octet-stream"),
    }
    policy = console_policy(import_map)
    tab = Tab(browser, "preview")

    def serve(request_route):
        url = request_route.request.url
        path = "/" + url.removeprefix("http://console.test/").split("?")[0]
        if path in files:
            body, kind = files[path]
        elif path.startswith("/static/") and (STATIC_DIR / path[8:]).is_file():
            body, kind = (STATIC_DIR / path[8:]).read_bytes(), _media_type(path)
        elif path.startswith("/vendor/") and (VENDOR_DIR / path[8:]).is_file():
            body, kind = (VENDOR_DIR / path[8:]).read_bytes(), _media_type(path)
        else:
            tab.blocked.append(url)
            return request_route.abort()
        headers = {"content-type": kind, "content-security-policy": policy}
        request_route.fulfill(status=200, body=body, headers=headers)

    tab.context.route("**/*", serve)
    try:
        dataset = tab.open("http://console.test/", "preview, 36k splats spz: to ready (s)")
        assert dataset.get("ready") == "1", dataset
        tab.settle("window.tireViewer")
        picture = tab.pixels("#preview canvas", "preview-spz")
        mask = asset_mask(picture)
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        assert 0.55 < (rows[-1] - rows[0]) / mask.shape[0] < 0.95  # framed: fills the view, inside it
        assert abs((cols[0] + cols[-1]) / 2 / mask.shape[1] - 0.5) < 0.1  # and centred
        # The spz opens as its .ply does: our render from the preview's own orbit, front not back.
        orbit = tab.page.evaluate("() => window.tireViewer.orbit()")
        assert picture.shape[:2] == (SIDE, SIDE)
        front = our_render(monkey, orbit, 0.0, "ours-preview-orbit-0")
        back = our_render(monkey, orbit, 180.0, "ours-preview-orbit-180")
        assert iou(mask, asset_mask(front)) > 0.85
        assert differing(picture, front) < 0.5 * differing(picture, back)
        assert tab.blocked == [] and tab.csp_violations() == [] and tab.page_errors() == []
    finally:
        tab.close()


def _media_type(path: str) -> str:
    return {".js": "text/javascript", ".css": "text/css"}.get(Path(path).suffix, "application/octet-stream")

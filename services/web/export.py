"""A job's before/after comparison as ONE self-contained HTML file that opens offline from ``file://``.

``comparison_html`` writes a page that holds everything the live console's comparison loads: the
viewer (``static/compare.js``, ``static/splat_scene.js``, ``static/compare.css``), its packages
(``VENDOR_MODULES``: three, its OrbitControls and Pass addons, Spark) and the assets themselves.

How it runs with no server and no network:

1. The module sources (one JSON list, in dependency order) and each asset sit in non-executing
   ``<script type="application/octet-stream">`` blocks, gzipped, then base64: base64 holds no ``<``,
   so nothing inside can close a block, and gzip more than pays for base64's third.
2. A small classic script (``BOOTSTRAP``) inflates them with the browser's ``DecompressionStream`` and
   turns each module into a ``blob:`` URL, rewriting a module's relative imports of modules already
   turned (three.module.js imports ``./three.core.js``, compare.js ``./splat_scene.js``) to their blob
   URLs: a blob URL has no folder to resolve a relative import against.
3. It then adds an import map sending ``three``, ``three/addons/...`` and ``@sparkjsdev/spark`` to their
   blob URLs, before any module loads (an import map must come first), turns each asset into a blob URL,
   imports compare.js and mounts it (``window.tireComparison`` is the controller).

The page carries its own Content-Security-Policy (a ``<meta>``): scripts only from ``blob:`` and the
page's own inline blocks (a per-file nonce), ``'wasm-unsafe-eval'`` for Spark's WebAssembly, workers
only from ``blob:``, styles only from the page's own block, and no network at all (``connect-src`` and
``img-src`` allow ``blob:`` and ``data:`` only): the file cannot reach out even when opened online.

Sizes, measured: three 0.187's core and module builds are 1.47 and 0.66 MB, Spark 2.2.0's minified
module 2.73 MB (its WebAssembly and worker inlined), the addons and the viewer 0.07 MB: 4.9 MB of code,
1.37 MB gzipped, 1.8 MB in the page. A `.ply` gzips to about 3/4 (the LGM monkey: 36,295 Gaussians,
2.03 -> 1.57 MB), then takes 4/3 of that as base64: the monkey before and after makes a 6.0 MB page
(10.6 MB without gzip). Writing it takes about 0.2 s, the code's part cached after the first page.
"""

from __future__ import annotations

import base64
import functools
import gzip
import html
import json
import secrets
from pathlib import Path

from services.common.errors import ConfigError

STATIC_DIR = Path(__file__).parent / "static"

VENDOR_MODULES: dict[str, str] = {
    "three": "three/build/three.module.js",
    "three/addons/controls/OrbitControls.js": "three/examples/jsm/controls/OrbitControls.js",
    "three/addons/postprocessing/Pass.js": "three/examples/jsm/postprocessing/Pass.js",
    "@sparkjsdev/spark": "@sparkjsdev/spark/dist/spark.module.min.js",
}
"""The bare module names the viewer imports -> their files under the vendor folder (``node_modules``).
The live console's import map sends the same names to ``/vendor/``."""

VENDOR_FILES: tuple[str, ...] = ("three/build/three.core.js", *VENDOR_MODULES.values())
"""Every vendor file the viewer loads, in dependency order: ``three.module.js`` imports
``./three.core.js`` relatively, so the console serves it too."""

VIEWER_MODULES: tuple[str, ...] = ("splat_scene.js", "compare.js")
"""The viewer's own modules under ``static/``, in dependency order (compare.js imports splat_scene.js)."""

VIEWER_STYLES = "compare.css"

PAGE_CSS = """
body { margin: 1.5rem auto; max-width: 1100px; padding: 0 1rem; font: 15px/1.45 system-ui, sans-serif;
  color: #1d232b; background: #f5f7f9; }
h1 { font-size: 1.3rem; margin: 0 0 0.3rem; }
.tc-note { color: #5f6b78; margin: 0 0 1rem; }
button { font: inherit; padding: 0.3rem 0.8rem; border: 1px solid #d9dee4; border-radius: 6px;
  background: #fff; color: inherit; cursor: pointer; }
"""

BOOTSTRAP = """
(async () => {
  const root = document.getElementById("tc-root");
  const nonce = document.currentScript.nonce;
  // A block's bytes: base64, then gzip.
  const inflate = (id) => {
    const binary = atob(document.getElementById(id).textContent);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return new Response(new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip")));
  };
  // 1. Each module as a blob: URL; relative imports of modules already made point at their URLs.
  const bundle = await inflate("tc-modules").json();
  const urls = {};
  const imports = {};
  for (const module of bundle.modules) {
    const source = module.source.replace(/(["'])\\.\\/([\\w.-]+\\.js)\\1/g, (match, quote, name) =>
      name in urls ? quote + urls[name] + quote : match);
    urls[module.name] = URL.createObjectURL(new Blob([source], { type: "text/javascript" }));
    if (module.specifier) imports[module.specifier] = urls[module.name];
  }
  // 2. The import map, before any module loads.
  const map = document.createElement("script");
  map.type = "importmap";
  map.nonce = nonce;
  map.textContent = JSON.stringify({ imports });
  document.head.append(map);
  // 3. The assets as blob: URLs, then the viewer.
  const options = JSON.parse(document.getElementById("tc-options").textContent);
  const side = (frames) => Promise.all(frames.map(async (frame) =>
    ({ url: URL.createObjectURL(await inflate(frame.id).blob()), fileType: frame.fileType })));
  const [before, after] = await Promise.all([side(options.before), side(options.after)]);
  const { mountComparison } = await import(urls[bundle.entry]);
  window.tireComparison = mountComparison(root, { ...options, before, after });
})().catch((error) => {
  const root = document.getElementById("tc-root");
  root.dataset.error = `The viewer could not start: ${error.message}`;
  const box = document.createElement("p");
  box.className = "tc-error";
  box.setAttribute("role", "alert");
  box.textContent = root.dataset.error;
  root.append(box);
});
"""


def comparison_html(
    before: list[tuple[bytes, str]],
    after: list[tuple[bytes, str]],
    orbit: dict,
    azimuths: list[float],
    title: str,
    vendor_dir: Path,
) -> str:
    """The comparison page, self-contained (see the module's docstring for what it holds and how it runs).

    Args:
        before: per time step, the input asset's bytes and its format name ("ply", "spz", "splat",
            "ksplat", "sog"); one entry for a 3D asset.
        after: the repaired asset, the same way; as many time steps as ``before``.
        orbit: the job's orbit, ``{"center": [x, y, z], "radius": r, "elevationDeg": e}`` (world units,
            degrees, the convention of ``services.common.cameras``).
        azimuths: degrees; a button each puts the camera where the job's view at that azimuth was.
        title: the page's title and heading (escaped here).
        vendor_dir: the ``node_modules`` folder holding three and Spark (``WebSettings.vendor_dir``).

    Raises:
        ValueError: no time steps, or not as many after as before.
        ConfigError: a vendor file is missing from ``vendor_dir``.
    """
    if not before or len(before) != len(after):
        raise ValueError(
            f"before and after must hold the same number (at least 1) of time steps, "
            f"got {len(before)} and {len(after)}"
        )
    nonce = secrets.token_urlsafe(18)
    blocks = [_data_block("tc-modules", _code(Path(vendor_dir).resolve(), *_stamps(Path(vendor_dir))))]
    frames: dict[str, list[dict]] = {"before": [], "after": []}
    for side, assets in (("before", before), ("after", after)):
        for i, (data, file_type) in enumerate(assets):
            block_id = f"tc-{side}-{i}"
            frames[side].append({"id": block_id, "fileType": str(file_type)})
            blocks.append(_data_block(block_id, gzip.compress(data, compresslevel=6, mtime=0)))
    options = {
        **frames,
        "orbit": orbit,
        "azimuths": [float(a) for a in azimuths],
        "labels": {"before": "Before", "after": "After"},
    }
    options_json = json.dumps(options).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    css = (STATIC_DIR / VIEWER_STYLES).read_text(encoding="utf-8") + PAGE_CSS
    css = css.replace("</", "<\\/")  # "</style" cannot end the block early
    policy = "; ".join(
        (
            "default-src 'none'",
            f"script-src 'nonce-{nonce}' blob: 'wasm-unsafe-eval'",
            f"style-src 'nonce-{nonce}'",
            "img-src blob: data:",
            "connect-src blob: data:",
            "worker-src blob:",
            "base-uri 'none'",
            "form-action 'none'",
        )
    )
    name = html.escape(title)
    return "\n".join(
        (
            "<!doctype html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{html.escape(policy)}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{name}</title>",
            f'<style nonce="{nonce}">{css}</style>',
            "</head>",
            "<body>",
            f"<h1>{name}</h1>",
            '<p class="tc-note">Drag to orbit, scroll to zoom. This file works offline.</p>',
            '<div id="tc-root"></div>',
            f'<script type="application/json" id="tc-options">{options_json}</script>',
            *blocks,
            f'<script nonce="{nonce}">{BOOTSTRAP}</script>',
            "</body>",
            "</html>",
            "",
        )
    )


def _data_block(block_id: str, data: bytes) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return f'<script type="application/octet-stream" id="{block_id}">{encoded}</script>'


def _stamps(vendor_dir: Path) -> tuple[tuple[str, int, int], ...]:
    """Each code file's path, size and modification time: the cache key of ``_code``."""
    files = [Path(vendor_dir) / path for path in VENDOR_FILES] + [
        STATIC_DIR / name for name in VIEWER_MODULES
    ]
    stamps = []
    for file in files:
        if not file.is_file():
            raise ConfigError(f"the viewer's file {file} is missing (vendor files: run `make install`)")
        stat = file.stat()
        stamps.append((str(file), stat.st_size, stat.st_mtime_ns))
    return tuple(stamps)


@functools.lru_cache(maxsize=2)
def _code(vendor_dir: Path, *stamps: tuple[str, int, int]) -> bytes:
    """The gzipped JSON bundle of every module, in dependency order: ``{"modules": [{name, specifier,
    source}], "entry"}``, ``specifier`` the bare name an import map gives it (None for the others)."""
    specifiers = {path: name for name, path in VENDOR_MODULES.items()}
    modules = [
        {
            "name": Path(path).name,
            "specifier": specifiers.get(path),
            "source": (vendor_dir / path).read_text("utf-8"),
        }
        for path in VENDOR_FILES
    ]
    modules += [
        {"name": name, "specifier": None, "source": (STATIC_DIR / name).read_text("utf-8")}
        for name in VIEWER_MODULES
    ]
    bundle = json.dumps({"modules": modules, "entry": "compare.js"}, separators=(",", ":"))
    return gzip.compress(bundle.encode("utf-8"), compresslevel=6, mtime=0)

"""Pictures of views for people: contact sheets, before/after sheets, mask overlays, turntable GIFs.

Every function takes and returns ``uint8`` RGB arrays (``[..., H, W, 3]``), except ``turntable_gif``,
which returns file bytes, and ``straight_rgba``, which turns a render into an RGBA reference image.
PNG bytes of any picture: ``services.common.tensors.png_bytes``.

Nothing here touches the store; the coordinator and the command-line tools write what these return.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

GUTTER = 4
"""White pixels between the tiles of ``before_after_sheet`` (and after its last column and block)."""
LABEL_HEIGHT = 16
"""Height of the band above each before/after block that holds the azimuth labels, pixels."""
SIDE_LABEL_WIDTH = 48
"""Width of the margin left of the tiles that holds the "before" and "after" labels, pixels."""
MAX_COLUMNS = 9
"""Azimuths per before/after block by default; more views wrap into further blocks."""

_WHITE = 255
_INK = (0, 0, 0)


def contact_sheet(images: np.ndarray, columns: int) -> np.ndarray:
    """Tile images row by row on a white background.

    Args:
        images: ``[V, H, W, 3]`` uint8, V >= 1.
        columns: tiles per row, >= 1.

    Returns:
        ``[rows * H, columns * W, 3]`` uint8 with ``rows = ceil(V / columns)``; image i sits at row
        ``i // columns``, column ``i % columns``; unused tiles of the last row are white.
    """
    _check_images("images", images)
    if isinstance(columns, bool) or not isinstance(columns, int | np.integer) or columns < 1:
        raise ValueError(f"columns must be an int >= 1, got {columns!r}")
    v, h, w, _ = images.shape
    rows = -(-v // columns)
    sheet = np.full((rows * h, columns * w, 3), _WHITE, dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        sheet[r * h : (r + 1) * h, c * w : (c + 1) * w] = image
    return sheet


def before_after_sheet(
    before: np.ndarray,
    after: np.ndarray,
    azimuths_deg: Sequence[float],
    max_columns: int = MAX_COLUMNS,
    row_names: tuple[str, str] = ("before", "after"),
) -> np.ndarray:
    """The same views before and after a repair, one column per azimuth, "before" above "after".

    Layout (all sizes in pixels, background white): ``columns = min(V, max_columns)`` views per block,
    ``blocks = ceil(V / columns)`` blocks stacked top to bottom. A block is a label band of
    ``LABEL_HEIGHT`` holding each column's azimuth (for example "20°", drawn with PIL's default font,
    left out where it is wider than a tile and a gutter), the "before" row, a ``GUTTER``, the "after"
    row, and a ``GUTTER``. View ``i`` is in block ``b, c = divmod(i, columns)``, at

        x = SIDE_LABEL_WIDTH + c * (W + GUTTER)
        y_before = b * (LABEL_HEIGHT + 2 * H + 2 * GUTTER) + LABEL_HEIGHT
        y_after = y_before + H + GUTTER

    and the tiles hold the input pixels unchanged. The left margin of ``SIDE_LABEL_WIDTH`` names the
    rows. The sheet is ``blocks * (LABEL_HEIGHT + 2 * H + 2 * GUTTER)`` high and
    ``SIDE_LABEL_WIDTH + columns * (W + GUTTER)`` wide.

    Args:
        before: ``[V, H, W, 3]`` uint8, the views of the asset as given.
        after: ``[V, H, W, 3]`` uint8, the same views of the repaired asset.
        azimuths_deg: V azimuths, degrees, for the labels (shown rounded to 0.1°).
        max_columns: most views per block, >= 1.
        row_names: the two rows' labels (for example "after" and "change" for a change map).

    Returns:
        The sheet, ``[height, width, 3]`` uint8 as above.
    """
    _check_images("before", before)
    _check_images("after", after)
    if before.shape != after.shape:
        raise ValueError(
            f"before and after must have the same shape, got {list(before.shape)} and {list(after.shape)}"
        )
    v, h, w, _ = before.shape
    azimuths = [float(az) for az in azimuths_deg]
    if len(azimuths) != v:
        raise ValueError(f"azimuths_deg must hold one azimuth per view ({v}), got {len(azimuths)}")
    if isinstance(max_columns, bool) or not isinstance(max_columns, int | np.integer) or max_columns < 1:
        raise ValueError(f"max_columns must be an int >= 1, got {max_columns!r}")

    columns = min(v, int(max_columns))
    blocks = -(-v // columns)
    block_height = LABEL_HEIGHT + 2 * h + 2 * GUTTER
    sheet = np.full((blocks * block_height, SIDE_LABEL_WIDTH + columns * (w + GUTTER), 3), _WHITE, np.uint8)
    labels: list[tuple[int, int, int, str]] = []  # (x, y, room, text): drawn after the tiles
    for i in range(v):
        b, c = divmod(i, columns)
        x = SIDE_LABEL_WIDTH + c * (w + GUTTER)
        y_before = b * block_height + LABEL_HEIGHT
        y_after = y_before + h + GUTTER
        sheet[y_before : y_before + h, x : x + w] = before[i]
        sheet[y_after : y_after + h, x : x + w] = after[i]
        labels.append((x + w // 2, b * block_height + LABEL_HEIGHT // 2, w + GUTTER, _degrees(azimuths[i])))
    for b in range(blocks):
        y_before = b * block_height + LABEL_HEIGHT
        labels.append((SIDE_LABEL_WIDTH // 2, y_before + h // 2, SIDE_LABEL_WIDTH, row_names[0]))
        labels.append((SIDE_LABEL_WIDTH // 2, y_before + h + GUTTER + h // 2, SIDE_LABEL_WIDTH, row_names[1]))

    picture = Image.fromarray(sheet)
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    for x, y, room, text in labels:
        # Labels only go in the label band and the side margin, never over a tile; a label that does
        # not fit its room is left out rather than spilling into its neighbour's.
        if draw.textlength(text, font=font) <= room:
            draw.text((x, y), text, fill=_INK, font=font, anchor="mm")
    return np.asarray(picture).copy()


def mask_overlay(
    rgb: np.ndarray,
    mask: np.ndarray,
    colour: Sequence[int] = (255, 0, 0),
    opacity: float = 0.5,
) -> np.ndarray:
    """Show a mask on its images: masked pixels tinted toward ``colour``, the mask's edge drawn in it.

    A masked pixel becomes ``round((1 - opacity) * rgb + opacity * colour)``; a masked pixel with an
    unmasked 4-neighbour (the inside edge of the mask, 1 pixel wide; the image border does not count)
    becomes ``colour``. Unmasked pixels are unchanged.

    Args:
        rgb: ``[T, H, W, 3]`` uint8 images (or one ``[H, W, 3]``).
        mask: ``[T, H, W]`` bool, or uint8 with nonzero = masked (or one ``[H, W]``).
        colour: RGB, 3 ints in [0, 255].
        opacity: tint strength in [0, 1].

    Returns:
        ``[T, H, W, 3]`` uint8 (``[H, W, 3]`` for one image), a new array.
    """
    rgb = np.asarray(rgb)
    mask = np.asarray(mask)
    if rgb.dtype != np.uint8 or rgb.ndim not in (3, 4) or rgb.shape[-1] != 3:
        raise ValueError(f"rgb must be [T, H, W, 3] or [H, W, 3] uint8, got {list(rgb.shape)} {rgb.dtype}")
    if mask.dtype not in (np.bool_, np.uint8) or mask.shape != rgb.shape[:-1]:
        raise ValueError(
            f"mask must be {list(rgb.shape[:-1])} bool or uint8 to match rgb, "
            f"got {list(mask.shape)} {mask.dtype}"
        )
    ink = np.asarray(colour)
    if ink.shape != (3,) or not np.all((ink >= 0) & (ink <= 255)) or ink.dtype.kind not in "iu":
        raise ValueError(f"colour must be 3 ints in [0, 255], got {colour!r}")
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity!r}")

    masked = mask.astype(bool)
    # Edge padding: a mask that reaches the border is not outlined along the border.
    pad = [(0, 0)] * (masked.ndim - 2) + [(1, 1), (1, 1)]
    p = np.pad(masked, pad, mode="edge")
    interior = masked & p[..., :-2, 1:-1] & p[..., 2:, 1:-1] & p[..., 1:-1, :-2] & p[..., 1:-1, 2:]
    out = rgb.copy()
    tinted = np.rint((1.0 - opacity) * rgb[masked].astype(np.float64) + opacity * ink.astype(np.float64))
    out[masked] = tinted.astype(np.uint8)
    out[masked & ~interior] = ink.astype(np.uint8)
    return out


def turntable_gif(frames: np.ndarray, frame_ms: int = 120) -> bytes:
    """A looping animated GIF of the frames, in order.

    Each frame gets its own 256-colour palette (Pillow's adaptive quantisation). Pillow merges a frame
    identical to the one before into it, adding up their durations, so the playback time is kept.

    Args:
        frames: ``[F, H, W, 3]`` uint8, F >= 1.
        frame_ms: display time of each frame, milliseconds, >= 20 (GIF stores hundredths of a second,
            and browsers play shorter delays at 100 ms).

    Returns:
        The GIF file's bytes (the same frames give the same bytes).
    """
    _check_images("frames", frames)
    if isinstance(frame_ms, bool) or not isinstance(frame_ms, int | np.integer) or frame_ms < 20:
        raise ValueError(f"frame_ms must be an int >= 20, got {frame_ms!r}")
    images = [Image.fromarray(np.ascontiguousarray(frame)) for frame in frames]
    buffer = io.BytesIO()
    images[0].save(
        buffer, format="GIF", save_all=True, append_images=images[1:], duration=int(frame_ms), loop=0
    )
    return buffer.getvalue()


def straight_rgba(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """An RGBA reference image from a render composited over black.

    Args:
        rgb: ``[H, W, 3]`` float, the render over a black background, i.e. premultiplied colour in [0, 1].
        alpha: ``[H, W]`` float coverage in [0, 1].

    Returns:
        ``[H, W, 4]`` uint8 with straight (not premultiplied) alpha: colour ``rgb / alpha`` where
        alpha > 0 (0 elsewhere), and alpha channel ``round(alpha * 255)``; both clipped to [0, 255].
    """
    rgb = np.asarray(rgb, dtype=np.float64)
    alpha = np.asarray(alpha, dtype=np.float64)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or alpha.shape != rgb.shape[:2]:
        raise ValueError(
            f"rgb must be [H, W, 3] and alpha [H, W] of the same H, W, "
            f"got {list(rgb.shape)} and {list(alpha.shape)}"
        )
    covered = alpha > 0.0
    colour = np.zeros_like(rgb)
    colour[covered] = rgb[covered] / alpha[covered, None]
    out = np.empty((*alpha.shape, 4), dtype=np.uint8)
    out[..., :3] = np.rint(np.clip(colour, 0.0, 1.0) * 255.0)
    out[..., 3] = np.rint(np.clip(alpha, 0.0, 1.0) * 255.0)
    return out


def _check_images(name: str, images: np.ndarray) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"{name} must be [V, H, W, 3] uint8, got {_describe(images)}")
    if images.shape[3] != 3 or 0 in images.shape:
        raise ValueError(f"{name} must be [V, H, W, 3] uint8 with V, H, W >= 1, got {_describe(images)}")


def _describe(array: object) -> str:
    if isinstance(array, np.ndarray):
        return f"{list(array.shape)} {array.dtype}"
    return type(array).__name__


def _degrees(azimuth: float) -> str:
    text = f"{round(azimuth, 1):g}"
    return ("0" if text == "-0" else text) + "°"

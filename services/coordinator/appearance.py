"""What a target view takes from its anchors: the repair made there, not the anchor's pixels.

The paper's observed pixels "take the anchor's appearance". Copying the anchor's pixels resamples them
(bilinear, across 20° or more of orbit): every hop blurs a little (one 20° hop of a clean front view
reaches about 27.5 dB on the observed pixels), and a clean asset passed through three rings comes back
at 27 dB although nothing needed repair. Carrying the anchor's *change* instead,

    target'(p) = target(p) + bilinear(anchor_now - anchor_rendered, anchor_xy(p)),

gives the same colour where the target and the anchor agreed before the repair (the same surface point,
view-independent colour), and changes nothing at all where the anchor was not repaired.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def carry_repairs(
    target: np.ndarray,
    anchor_index: np.ndarray,
    anchor_xy: np.ndarray,
    anchors_now: Sequence[np.ndarray],
    anchors_rendered: Sequence[np.ndarray],
) -> np.ndarray:
    """The target view with each observed pixel moved by its anchor's change at the pixel's position.

    Args:
        target: ``[H, W, 3]`` uint8, the target as rendered.
        anchor_index: ``[H, W]`` int32, the index (into ``anchors_now``) of the anchor observing each
            pixel, -1 where none does (those pixels are returned as they are).
        anchor_xy: ``[H, W, 2]`` float32, (x, y) of the pixel in that anchor, pixel centres at +0.5.
        anchors_now: per anchor index, ``[H, W, 3]`` uint8 its current (repaired) colours.
        anchors_rendered: per anchor index, ``[H, W, 3]`` uint8 its colours as rendered.

    Returns:
        ``[H, W, 3]`` uint8, a new array.
    """
    out = target.astype(np.float32)
    for a in np.unique(anchor_index[anchor_index >= 0]):
        where = anchor_index == a
        change = anchors_now[a].astype(np.float32) - anchors_rendered[a].astype(np.float32)
        if not change.any():
            continue
        sampled = bilinear(change, anchor_xy[where])
        out[where] += sampled
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def bilinear(image: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``image`` at pixel positions, edges clamped.

    Args:
        image: ``[H, W, C]`` float32.
        xy: ``[P, 2]`` float (x, y), pixel centres at +0.5 (the top-left pixel's centre is (0.5, 0.5)).

    Returns:
        ``[P, C]`` float32.
    """
    h, w = image.shape[:2]
    x = np.clip(xy[:, 0].astype(np.float64) - 0.5, 0.0, w - 1.0)
    y = np.clip(xy[:, 1].astype(np.float64) - 0.5, 0.0, h - 1.0)
    x0 = np.minimum(np.floor(x).astype(np.int64), w - 2) if w > 1 else np.zeros(len(x), np.int64)
    y0 = np.minimum(np.floor(y).astype(np.int64), h - 2) if h > 1 else np.zeros(len(y), np.int64)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)

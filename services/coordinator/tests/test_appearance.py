"""carry_repairs: observed pixels take their anchor's change, nothing else."""

from __future__ import annotations

import cv2
import numpy as np

from services.coordinator.appearance import bilinear, carry_repairs


def test_an_unrepaired_anchor_passes_on_nothing():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    anchor = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    index = np.zeros((32, 40), np.int32)
    xy = rng.uniform(0, 40, (32, 40, 2)).astype(np.float32)
    np.testing.assert_array_equal(carry_repairs(target, index, xy, [anchor], [anchor]), target)


def test_observed_pixels_move_by_their_anchors_change_and_the_rest_stays():
    target = np.full((8, 8, 3), 100, np.uint8)
    rendered = [np.full((8, 8, 3), 50, np.uint8), np.full((8, 8, 3), 50, np.uint8)]
    now = [rendered[0] + np.uint8(20), rendered[1].copy()]
    now[1][:, :4] = 10  # the second anchor changed on its left half only
    index = np.full((8, 8), -1, np.int32)
    index[:2] = 0
    index[4:] = 1
    xy = np.zeros((8, 8, 2), np.float32)
    xy[..., 0] = np.arange(8)[None, :] + 0.5
    xy[..., 1] = np.arange(8)[:, None] + 0.5
    out = carry_repairs(target, index, xy, now, rendered)
    assert (out[:2] == 120).all()  # +20 from anchor 0
    assert (out[2:4] == 100).all()  # no anchor: unchanged
    assert (out[4:, :4] == 60).all() and (out[4:, 4:] == 100).all()  # anchor 1: -40 where it changed


def test_bilinear_matches_opencv_and_takes_any_number_of_points():
    rng = np.random.default_rng(1)
    image = rng.uniform(0, 255, (24, 31, 3)).astype(np.float32)
    xy = rng.uniform(0.5, [30.5, 23.5], (50_000, 2)).astype(np.float32)  # more than cv2.remap's 32767
    ours = bilinear(image, xy)
    theirs = cv2.remap(
        image, xy[:1000, :1] - 0.5, xy[:1000, 1:] - 0.5, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    ).reshape(-1, 3)
    assert ours.shape == (50_000, 3)
    np.testing.assert_allclose(ours[:1000], theirs, atol=0.05)

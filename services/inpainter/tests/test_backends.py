"""The colour backend: known answers, invariants, the numba kernel against its numpy twin, the artifact."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import safetensors.numpy

from services.common.cameras import Cameras, orbit_cameras, project, unproject
from services.common.errors import ConfigError
from services.common.gaussians import read_ply
from services.common.rasterizer import RenderResult, rasterize
from services.inpainter.backends import ColourBackend, make_backend
from services.inpainter.colour import (
    MISFIT_FLOOR_LAB,
    MISFIT_THRESHOLD,
    ColourModel,
    apply_mixture_transport,
    apply_mixture_transport_reference,
    apply_transport,
    apply_transport_reference,
    canonical_safetensors,
    continue_observed,
    fill_holes,
    fit_mixture_transport,
    fit_transport,
    inpaint_view,
    kmeans,
    lab_to_rgb,
    local_palette,
    misfit,
    palette_transfer,
    read_safetensors_metadata,
    rgb_to_lab,
    sinkhorn,
)
from services.inpainter.contract import FitConfig, InvalidSubject

MONKEY = Path(__file__).parents[3] / "samples" / "monkey_lgm.ply"
SIZE = 80


def texture(seed: int, sigma: float = 2.0, size: int = SIZE) -> np.ndarray:
    """``[size, size]`` float32 smooth noise, zero mean, unit std."""
    noise = np.random.default_rng(seed).standard_normal((size, size)).astype(np.float32)
    field = cv2.GaussianBlur(noise, (0, 0), sigma)
    return (field - field.mean()) / field.std()


def lab_image(l_channel, a_channel, b_channel) -> np.ndarray:
    """``[H, W, 3]`` uint8 sRGB from Lab channels (arrays or scalars broadcast to SIZE x SIZE)."""
    lab = np.stack(np.broadcast_arrays(l_channel, a_channel, b_channel, np.zeros((SIZE, SIZE))), axis=-1)
    return lab_to_rgb(lab[..., :3].astype(np.float32))


def disc(radius: float, size: int = SIZE) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] + 0.5
    return (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < radius**2


@pytest.fixture(scope="module")
def backend():
    return ColourBackend(threads=1)


@pytest.fixture(scope="module")
def brown():
    """A brown fur-like texture, its subject model, and a blue-grey copy of the same texture."""
    t = texture(0)
    reference = lab_image(42 + 10 * t, 12 + 2 * texture(1), 24 + 3 * texture(2))
    drifted = lab_image(58 + 10 * t, -3 + 2 * texture(1), -14 + 3 * texture(2))
    subject = ColourBackend(threads=1).fit_subject(
        reference[None], np.ones((1, SIZE, SIZE), np.float32), FitConfig(seed=3), lambda *_: None
    )
    return reference, drifted, subject


def region_lab(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return rgb_to_lab(image[mask]).astype(np.float64)


BROWN, CREAM = np.array([42.0, 12, 24]), np.array([85.0, 3, 15])


def box(top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """``[SIZE, SIZE]`` bool, True on rows [top, bottom) and columns [left, right)."""
    out = np.zeros((SIZE, SIZE), bool)
    out[top:bottom, left:right] = True
    return out


def lgm_drift(lab: np.ndarray) -> np.ndarray:
    """``[..., 3]`` Lab drifted as LGM drifts an unseen back: paler, half the lightness contrast, a
    quarter of the saturation, tinted blue-grey."""
    drifted = [0.5 * lab[..., 0] + 35, 0.25 * lab[..., 1] - 3, 0.25 * lab[..., 2] - 12]
    return np.stack(drifted, axis=-1).astype(np.float32)


def fit(reference: np.ndarray) -> bytes:
    """The subject model of one reference whose every pixel is foreground."""
    masks = np.ones((1, *reference.shape[:2]), np.float32)
    return ColourBackend(threads=1).fit_subject(reference[None], masks, FitConfig(seed=3), lambda *_: None)


@pytest.fixture(scope="module")
def parts():
    """A subject of two parts, brown fur (columns < 48) and a cream face (the rest), both textured: its
    Lab ``[SIZE, SIZE, 3]``, its sRGB and its model."""
    face = (np.arange(SIZE) >= 48)[None].repeat(SIZE, axis=0)
    noise = np.stack([np.where(face, 3, 8) * texture(0), 1.5 * texture(1), 2 * texture(2)], axis=-1)
    reference = lab_to_rgb((np.where(face[..., None], CREAM, BROWN) + noise).astype(np.float32))
    return rgb_to_lab(reference), reference, fit(reference)


def seen_from(result: RenderResult, cameras: Cameras, source: int, view: int, tolerance: float = 0.05):
    """``[H, W]`` bool: the foreground pixels of ``view`` whose surface camera ``source`` sees (back-
    projected with their depth and projected into ``source``, they land on its depth within
    ``tolerance`` world units)."""
    foreground = result.alpha[view] >= 0.5
    rows, cols = np.nonzero(foreground)
    xy = np.stack([cols + 0.5, rows + 0.5], axis=1)
    world = unproject(cameras.viewmats[view], cameras.Ks[view], xy, result.depth[view][foreground])
    projected, depth = project(cameras.viewmats[source], cameras.Ks[source], world)
    x, y = np.clip(projected.astype(int), 0, [cameras.width - 1, cameras.height - 1]).T
    hit = (result.alpha[source][y, x] >= 0.5) & (np.abs(depth - result.depth[source][y, x]) < tolerance)
    seen = np.zeros_like(foreground)
    seen[rows[hit], cols[hit]] = True
    return seen


@pytest.fixture(scope="module")
def monkey(backend):
    """The LGM monkey from the front (the reference: brown fur, a cream face and belly) and from the side
    (azimuth 90: the front half observed, the back drifted blue), 96 x 96: sRGB ``[2, 96, 96, 3]``,
    alpha ``[2, 96, 96]``, the side view's foreground that the front camera does not see, the model."""
    cameras = orbit_cameras([0, 90], 96, 96)
    result = rasterize(read_ply(MONKEY), cameras)
    rgb = np.clip(np.rint(result.rgb * 255), 0, 255).astype(np.uint8)
    unobserved = (result.alpha[1] >= 0.5) & ~seen_from(result, cameras, source=0, view=1)
    subject = backend.fit_subject(rgb[:1], result.alpha[:1], FitConfig(), lambda *_: None)
    return rgb, result.alpha, unobserved, subject


# ----------------------------------------------------------------------------------------------------
# Inpaint invariants


def test_unmasked_pixels_are_bit_identical_and_shapes_hold(backend, brown):
    _, drifted, subject = brown
    rng = np.random.default_rng(5)
    images = np.stack([drifted, rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)])
    masks = np.stack([disc(25), rng.random((SIZE, SIZE)) < 0.3])
    alpha = np.where(disc(30), 1.0, 0.0).astype(np.float32)[None].repeat(2, axis=0)
    alpha[:, 38:42, 38:42] = 0.0  # holes inside the masks
    out = backend.inpaint(images, masks, alpha, subject, 0.8, seed=1)
    assert out.shape == images.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[~masks], images[~masks])
    assert (out[masks] != images[masks]).any(axis=-1).mean() > 0.5
    # The inputs are not written to.
    assert (images[0] == drifted).all()


def test_strength_zero_is_the_identity(backend, brown):
    _, drifted, subject = brown
    alpha = np.zeros((1, SIZE, SIZE), np.float32)  # every masked pixel a hole: still nothing changes
    out = backend.inpaint(drifted[None], np.ones((1, SIZE, SIZE), bool), alpha, subject, 0.0, seed=0)
    np.testing.assert_array_equal(out, drifted[None])


def test_deterministic_for_a_seed_and_close_across_seeds(brown):
    _, drifted, subject = brown
    images, masks = np.stack([drifted, drifted[::-1]]), np.stack([disc(30), disc(20)])
    one = ColourBackend(threads=1).inpaint(images, masks, None, subject, 1.0, seed=7)
    again = ColourBackend(threads=2).inpaint(images, masks, None, subject, 1.0, seed=7)
    other = ColourBackend(threads=1).inpaint(images, masks, None, subject, 1.0, seed=8)
    np.testing.assert_array_equal(one, again)
    # The seed only draws the whole-palette fallback's samples; with trusted pixels around the mask
    # (as here) the local transfer does not use it at all.
    difference = np.abs(rgb_to_lab(one[masks]) - rgb_to_lab(other[masks]))
    assert difference.mean() < 1.5 and np.percentile(difference, 99) < 6


# ----------------------------------------------------------------------------------------------------
# Inpaint known answers


def test_a_shifted_region_moves_toward_the_reference_more_with_strength(backend, brown):
    reference, drifted, subject = brown
    mask = disc(30)
    target = np.where(mask[..., None], drifted, reference)
    ref_lab = region_lab(reference, np.ones((SIZE, SIZE), bool))
    distances = []
    for strength in (0.0, 0.3, 0.6, 1.0):
        out = backend.inpaint(target[None], mask[None], None, subject, strength, seed=0)[0]
        distances.append(np.linalg.norm(region_lab(out, mask).mean(0) - ref_lab.mean(0)))
        if strength == 1.0:
            moved = region_lab(out, mask)
    assert distances[0] > 25  # blue-grey against brown
    assert distances[0] > distances[1] > distances[2] > distances[3]
    assert distances[3] < 2.5
    # The spread of each channel is the reference's, not one flat colour.
    np.testing.assert_allclose(moved.std(0), ref_lab.std(0), rtol=0.3)


def test_palette_proportions_follow_the_reference():
    # Reference: brown on 70% of the image, cream on 30%, each with a little noise.
    rng = np.random.default_rng(0)
    cols = np.arange(SIZE)[None, :].repeat(SIZE, axis=0)
    brown_lab, cream_lab = np.array([40.0, 15, 25]), np.array([85.0, 3, 15])
    is_brown = cols < 0.7 * SIZE
    ref = np.where(is_brown[..., None], brown_lab, cream_lab) + rng.normal(0, 1.0, (SIZE, SIZE, 3))
    reference = lab_to_rgb(ref.astype(np.float32))
    subject = ColourBackend().fit_subject(
        reference[None], np.ones((1, SIZE, SIZE), np.float32), FitConfig(clusters=4), lambda *_: None
    )
    # Target: blue on 70% of the region's rows, grey on 30%.
    rows = np.arange(SIZE)[:, None].repeat(SIZE, axis=1)
    blue = rows < 0.7 * SIZE
    tgt = np.where(blue[..., None], np.array([50.0, -5, -30]), np.array([65.0, 0, 0]))
    target = lab_to_rgb((tgt + rng.normal(0, 1.0, (SIZE, SIZE, 3))).astype(np.float32))
    mask = np.ones((SIZE, SIZE), bool)

    out = ColourBackend().inpaint(target[None], mask[None], None, subject, 1.0, seed=0)[0]
    lab = rgb_to_lab(out).reshape(-1, 3)
    nearest_brown = np.linalg.norm(lab - brown_lab, axis=1) < np.linalg.norm(lab - cream_lab, axis=1)
    assert nearest_brown.mean() == pytest.approx(0.7, abs=0.05)
    # Blobs stay blobs: the blue rows became one colour, the grey rows the other.
    assert nearest_brown.reshape(SIZE, SIZE)[blue].mean() > 0.95


def test_the_fallback_moves_tiny_regions_to_the_middle_of_the_palette_not_to_a_random_sample(backend, brown):
    # A view whose whole foreground is two drifted pixels, both masked: no trusted pixel, so the
    # whole-palette fallback, whose samples are random, moves them.
    reference, drifted, subject = brown
    mask = np.zeros((SIZE, SIZE), bool)
    mask[40, 40] = mask[10, 70] = True
    alpha = mask.astype(np.float32)
    brown_mean = region_lab(reference, np.ones((SIZE, SIZE), bool)).mean(0)
    for seed in range(3):
        out = backend.inpaint(drifted[None], mask[None], alpha[None], subject, 1.0, seed=seed)[0]
        assert np.linalg.norm(region_lab(out, mask) - brown_mean, axis=1).max() < 10


def test_structure_is_kept(backend, brown):
    # A finely textured blue-grey region drifted inside the observed brown fur.
    reference, _, subject = brown
    fine = texture(11, sigma=0.8)
    mask = disc(25)
    target = np.where(mask[..., None], lab_image(60 + 12 * fine, -4, -15), reference)
    out = backend.inpaint(target[None], mask[None], None, subject, 1.0, seed=0)[0]

    def high_pass(image):
        lightness = rgb_to_lab(image)[..., 0]
        return (lightness - cv2.GaussianBlur(lightness, (0, 0), 3.0))[disc(21)]

    assert np.corrcoef(high_pass(target), high_pass(out))[0, 1] > 0.9
    # ... while the colour did change: the b* channel went from blue toward the reference's yellow.
    assert rgb_to_lab(out[mask])[:, 2].mean() > rgb_to_lab(target[mask])[:, 2].mean() + 20


def test_holes_are_filled_from_the_foreground_around_them(backend, brown):
    reference, _, subject = brown
    alpha = disc(32).astype(np.float32)
    image = np.where(alpha[..., None] > 0, reference, 0).astype(np.uint8)
    # A hole in the middle, and a gap cut in from the silhouette, both left black by the "render".
    alpha[34:46, 34:46] = 0.0
    alpha[36:44, 60:80] = 0.0
    image[alpha < 0.5] = 0
    mask = disc(32)
    holes = mask & (alpha < 0.5)
    out = backend.inpaint(image[None], mask[None], alpha[None], subject, 0.3, seed=0)[0]
    foreground = region_lab(reference, disc(32)).mean(0)
    filled = region_lab(out, holes)
    assert filled[:, 0].min() > 15  # nothing left black
    assert np.linalg.norm(filled.mean(0) - foreground) < 8
    # fill_holes alone: only the holes change, and the gap did not take the background's black.
    only = fill_holes(image, holes, alpha >= 0.5)
    np.testing.assert_array_equal(only[~holes], image[~holes])
    assert np.linalg.norm(region_lab(only, holes & (np.arange(SIZE) >= 60)).mean(0) - foreground) < 8


def test_the_monkeys_blue_back_turns_to_the_brown_of_the_fur_around_it(backend, monkey):
    # The side view as a ring sees it: what the front camera sees is observed, the rest is the mask.
    rgb, alpha, back, subject = monkey
    observed = (alpha[1] >= 0.5) & ~back
    assert back.sum() > 1000 and observed.sum() > 800
    # The fur next to the back (not the whole observed side, whose cream face is no part of the back).
    beside = observed & (cv2.dilate(back.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0)
    fur = region_lab(rgb[1], beside).mean(0)
    before = region_lab(rgb[1], back)
    assert before.mean(0)[2] < 0 < fur[2]  # b*: the back is blue, the observed fur yellow-brown

    after = {}
    for strength in (0.3, 1.0):
        out = backend.inpaint(rgb[1:], back[None], alpha[1:], subject, strength, seed=0)[0]
        np.testing.assert_array_equal(out[~back], rgb[1][~back])
        after[strength] = region_lab(out, back)
    gap = np.linalg.norm(before.mean(0) - fur)
    assert np.linalg.norm(after[0.3].mean(0) - fur) < 0.9 * gap
    assert np.linalg.norm(after[1.0].mean(0) - fur) < 0.5 * gap
    assert after[1.0].mean(0)[2] > 0.4 * fur[2]
    # Per pixel: most of the back now lies in the reference's palette; not much more than half did
    # before (its dark shading fits the subject's dark parts, and stays).
    model = ColourModel.from_bytes(subject)
    assert (misfit(before, model) < MISFIT_THRESHOLD).mean() < 0.6
    assert (misfit(after[1.0], model) < MISFIT_THRESHOLD).mean() > 0.7


# ----------------------------------------------------------------------------------------------------
# Part-aware transfer: what moves, where to, what it keeps


def test_a_masked_region_whose_colours_fit_the_subject_comes_back_bit_identical(backend, parts):
    # Do no harm: a mask over a view of the subject itself, across both parts and the edge between them.
    _, reference, subject = parts
    out = backend.inpaint(reference[None], box(10, 70, 20, 70)[None], None, subject, 1.0, seed=0)[0]
    np.testing.assert_array_equal(out, reference)


def test_the_monkeys_own_front_keeps_its_face_and_fur(backend, monkey):
    # Do no harm on a real asset: every foreground pixel of the view the subject was fitted on, masked.
    # Only the pale blue-grey that LGM's drift shows at the crown's edge, even from the front, moves.
    rgb, alpha, _, subject = monkey
    front = alpha[:1] >= 0.5
    out = backend.inpaint(rgb[:1], front, alpha[:1], subject, 1.0, seed=0)
    changed = (out != rgb[:1]).any(axis=-1)
    assert changed.sum() < 0.05 * front.sum()
    assert region_lab(rgb[0], changed[0])[:, 2].mean() < region_lab(rgb[0], front[0])[:, 2].mean() - 8


def test_a_fitting_region_stays_bit_identical_beside_a_drifted_one(backend, parts):
    truth, reference, _ = parts
    # Lettuce: saturated green with its red channel near 0, where sRGB -> Lab -> sRGB is not exact.
    lettuce = box(5, 22, 52, 76)
    rng = np.random.default_rng(4)
    n = int(lettuce.sum())
    subject_rgb = reference.copy()
    subject_rgb[lettuce] = np.stack(
        [rng.integers(5, 20, n), rng.integers(150, 200, n), rng.integers(80, 130, n)], axis=-1
    )
    assert (lab_to_rgb(rgb_to_lab(subject_rgb[lettuce])) != subject_rgb[lettuce]).any()
    fur = box(30, 50, 12, 30)
    view = subject_rgb.copy()
    view[fur] = lab_to_rgb(lgm_drift(truth))[fur]
    out = backend.inpaint(view[None], (fur | lettuce)[None], None, fit(subject_rgb), 1.0, seed=0)[0]
    assert np.linalg.norm(region_lab(out, fur).mean(0) - BROWN) < 6  # the drifted fur did move
    np.testing.assert_array_equal(out[lettuce], view[lettuce])


def test_a_drifted_region_takes_the_colour_of_the_part_around_it_not_the_whole_palette(backend, parts):
    # Regions drifted pale blue-grey, one in the brown fur, one in the cream face; each alone in a view
    # (the whole palette would paint it part brown, part cream), then both in one.
    truth, reference, subject = parts
    in_fur, in_face = box(30, 50, 12, 30), box(30, 50, 56, 72)
    for mask in (in_fur, in_face, in_fur | in_face):
        view = np.where(mask[..., None], lab_to_rgb(lgm_drift(truth)), reference)
        out = backend.inpaint(view[None], mask[None], None, subject, 1.0, seed=0)[0]
        np.testing.assert_array_equal(out[~mask], view[~mask])
        for region, own, other in ((in_fur & mask, BROWN, CREAM), (in_face & mask, CREAM, BROWN)):
            if not region.any():
                continue
            before, after = region_lab(view, region), region_lab(out, region)
            assert np.linalg.norm(before.mean(0) - own) > 20
            assert np.linalg.norm(after.mean(0) - own) < 6
            assert np.linalg.norm(after - truth[region], axis=1).mean() < 7  # Delta E per pixel
            assert np.linalg.norm(after - other, axis=1).mean() > 30


@pytest.mark.parametrize("period", [8, 32])
def test_stripes_keep_their_pattern_and_take_their_colour_back(backend, period):
    stripes = np.sin(2 * np.pi * np.arange(SIZE) / period)[None].repeat(SIZE, axis=0)
    reference = lab_image(42 + 12 * stripes, 12, 24)
    truth = rgb_to_lab(reference)
    region = box(24, 56, 24, 56)
    view = np.where(region[..., None], lab_to_rgb(lgm_drift(truth)), reference)  # half the contrast
    out = backend.inpaint(view[None], region[None], None, fit(reference), 1.0, seed=0)[0]
    original, before, after = (rgb_to_lab(image)[..., 0][region] for image in (reference, view, out))
    assert before.std() < 0.6 * original.std()
    assert np.linalg.norm(region_lab(view, region) - truth[region], axis=1).mean() > 30
    assert np.linalg.norm(region_lab(out, region) - truth[region], axis=1).mean() < 4
    assert np.corrcoef(after, original)[0, 1] > 0.9
    if period == 32:  # wider than the smoothing: the palette's contrast comes back
        assert 0.8 * original.std() < after.std() < 1.2 * original.std()
    else:
        # Stripes finer than the transport's smoothing (3 pixels) are carried with the contrast they
        # had, not re-sorted onto the palette's.
        assert 0.95 * before.std() < after.std() < 1.2 * original.std()


def test_no_seam_at_the_edge_of_the_mask(backend, parts):
    # A region of the brown fur drifted pale blue-grey (the cream face 14 pixels to its right).
    truth, reference, subject = parts
    region = box(20, 60, 6, 34)
    view = np.where(region[..., None], lab_to_rgb(lgm_drift(truth)), reference)
    out = backend.inpaint(view[None], region[None], None, subject, 1.0, seed=0)[0]

    def across_the_edge(image):
        """Mean Delta E between the mask's edge pixels and the pixels 2 outside them."""
        lab = rgb_to_lab(image).astype(np.float64)
        rows, cols = slice(20, 60), slice(6, 34)
        inside = np.concatenate([lab[20, cols], lab[59, cols], lab[rows, 6], lab[rows, 33]])
        outside = np.concatenate([lab[18, cols], lab[61, cols], lab[rows, 4], lab[rows, 35]])
        return np.linalg.norm(inside - outside, axis=1).mean()

    assert across_the_edge(view) > 30
    # What is left is the texture's own change over 2 pixels.
    assert across_the_edge(out) < across_the_edge(reference) + 1.5


def test_a_small_drifted_speck_takes_the_colour_around_it_whatever_else_drifted(backend, brown):
    reference, drifted, subject = brown
    truth = rgb_to_lab(reference)
    speck, large = box(60, 63, 60, 63), box(8, 40, 8, 40)
    view = reference.copy()
    view[large] = drifted[large]  # pale blue-grey
    view[speck] = lab_image(65, 18, -10)[speck]  # lavender: drifted another way
    for mask in (speck, speck | large):
        out = backend.inpaint(view[None], mask[None], None, subject, 1.0, seed=0)[0]
        assert np.linalg.norm(region_lab(out, speck) - truth[speck], axis=1).mean() < 8


def test_a_view_with_no_trusted_pixel_falls_back_to_the_whole_palette(brown):
    # The whole foreground masked, every pixel drifted: nothing observed to continue from.
    _, drifted, subject = brown
    model = ColourModel.from_bytes(subject)
    mask = disc(30)
    assert misfit(rgb_to_lab(drifted[mask]), model).min() > MISFIT_THRESHOLD
    out = inpaint_view(
        drifted, mask, mask.astype(np.float32), model, strength=1.0, rng=np.random.default_rng(0)
    )
    fallback = palette_transfer(rgb_to_lab(drifted), mask, model, np.random.default_rng(0))
    np.testing.assert_array_equal(out[mask], lab_to_rgb(fallback[mask]))
    np.testing.assert_array_equal(out[~mask], drifted[~mask])
    subject_mean = model.weights @ model.means
    assert np.linalg.norm(region_lab(drifted, mask).mean(0) - subject_mean) > 25
    assert np.linalg.norm(region_lab(out, mask).mean(0) - subject_mean) < 2.5


# ----------------------------------------------------------------------------------------------------
# Drift, the local palette, continuity


def test_misfit_is_zero_at_a_cluster_mean_and_grows_with_distance():
    model = ColourModel(
        weights=np.array([0.6, 0.4], np.float32),
        means=np.array([BROWN, CREAM], np.float32),
        covariances=np.stack([np.diag([16.0, 4.0, 4.0]), np.eye(3)]).astype(np.float32),
        pixels=100,
    )
    np.testing.assert_allclose(misfit(model.means, model), 0.0, atol=1e-6)
    distances = np.array([0.0, 1, 2, 4, 8, 16, 32])
    toward_blue = misfit(BROWN - distances[:, None] * [0, 0, 1], model)
    assert (np.diff(toward_blue) > 0).all()
    # Mahalanobis to the nearest cluster, its spread floored: b* std sqrt(4 + floor_b^2) for brown ...
    floor_l, _, floor_b = MISFIT_FLOOR_LAB
    np.testing.assert_allclose(toward_blue, distances / np.sqrt(4.0 + floor_b**2), rtol=1e-6)
    # ... and a tight cluster's own shading is not drift: L* std sqrt(1 + floor_l^2) for cream.
    shaded = (CREAM + np.array([4.0, 0, 0]))[None]
    assert misfit(shaded, model)[0] == pytest.approx(4 / np.sqrt(1 + floor_l**2))
    assert misfit(np.array([[60.0, -3, -14]]), model)[0] > MISFIT_THRESHOLD  # pale blue-grey


def test_local_palette_weighs_each_part_by_the_observed_pixels_near_the_region():
    model = ColourModel(
        weights=np.array([0.5, 0.5], np.float32),
        means=np.array([BROWN, CREAM], np.float32),
        covariances=np.stack([np.eye(3) * 4.0] * 2).astype(np.float32),
        pixels=100,
    )
    rng = np.random.default_rng(0)
    observed = np.concatenate([BROWN + rng.normal(0, 1, (30, 3)), CREAM + rng.normal(0, 1, (70, 3))])
    # Counted alike: the parts' shares of the observed pixels.
    palette = local_palette(observed, np.ones(100), model)
    np.testing.assert_allclose(palette.weights, [0.3, 0.7], atol=1e-5)
    np.testing.assert_array_equal(palette.means, model.means)
    # Only the brown pixels near the region: cream keeps a weight too small to paint with.
    palette = local_palette(observed, np.r_[np.ones(30), np.zeros(70)], model)
    assert palette.weights[1] < 1e-5 and palette.weights.sum() == pytest.approx(1.0)
    assert palette.weights.dtype == np.float32 and (palette.weights > 0).all()


def test_continue_observed_meets_the_observed_colour_at_the_edge_and_leaves_the_inside():
    observed_side = np.zeros((SIZE, SIZE), bool)
    observed_side[:, :20] = True
    moving = ~observed_side
    lab = np.where(observed_side[..., None], np.float32([50, 10, 20]), np.float32([70, 0, 0]))
    target = np.where(moving[..., None], np.float32([40, 10, 20]), lab).astype(np.float32)
    lab = lab.astype(np.float32)
    out = continue_observed(target, lab, observed_side.astype(np.float32), moving, reach=4.0)
    assert out.shape == target.shape and out.dtype == np.float32
    # Beside the edge the moved colour meets the observed one; 10 windows inside it stays.
    np.testing.assert_allclose(out[:, 20], [[50, 10, 20]] * SIZE, atol=0.5)
    np.testing.assert_allclose(out[:, 60:], target[:, 60:], atol=1e-4)
    # A transfer that already matches the observed surface is left as it is.
    same = np.where(moving[..., None], np.float32([50, 10, 20]), lab).astype(np.float32)
    out = continue_observed(same, lab, observed_side.astype(np.float32), moving, reach=4.0)
    np.testing.assert_allclose(out[moving], same[moving], atol=1e-4)


# ----------------------------------------------------------------------------------------------------
# FitSubject


def test_fit_reports_progress_and_the_artifact_round_trips(backend, brown):
    reference = brown[0]
    masks = np.zeros((2, SIZE, SIZE), np.float32)
    masks[:, 10:70, 10:70] = 1.0
    images = np.stack([reference, reference[:, ::-1]])
    events = []
    config = FitConfig(steps=400, clusters=5, seed=11)
    artifact = backend.fit_subject(images, masks, config, lambda *event: events.append(event))

    steps = [e[0] for e in events]
    losses = np.array([e[2] for e in events])
    assert steps == list(range(1, 51)) and {e[1] for e in events} == {50}  # capped at 50 iterations
    assert (np.diff(losses) <= 1e-9 * losses[:-1]).all() and losses[-1] < losses[0]

    # No cluster is made of edge blends here (the square is one texture to its edge): all are kept.
    foreground = masks > 0.5
    model = ColourModel.from_bytes(artifact)
    assert 1 <= len(model) <= 5 and model.pixels == 2 * 60 * 60
    assert model.weights.sum() == pytest.approx(1.0, abs=1e-6)
    assert model.means.shape == (len(model), 3) and model.covariances.shape == (len(model), 3, 3)
    assert np.all(np.linalg.eigvalsh(model.covariances.astype(np.float64)) >= 0.99)  # + 1 regularised
    np.testing.assert_allclose(model.weights @ model.means, region_lab(images, foreground).mean(0), atol=0.5)
    metadata = read_safetensors_metadata(artifact)
    assert metadata["backend"] == "colour" and metadata["format"] == "1"
    assert metadata["colour_space"] == "CIELab D65" and metadata["pixels"] == str(2 * 60 * 60)
    assert set(safetensors.numpy.load(artifact)) == {"weights", "means", "covariances"}

    again = ColourBackend(threads=2).fit_subject(images, masks, config, lambda *_: None)
    assert again == artifact  # same seed, same bytes
    assert ColourModel.from_bytes(again).to_bytes(**_extra(metadata)) == artifact
    other = backend.fit_subject(images, masks, FitConfig(clusters=5, seed=12), lambda *_: None)
    assert other != artifact


def test_the_fit_leaves_out_soft_edges_unless_the_mask_has_no_interior(backend):
    # A brown square whose 3-pixel rim (mask 0.6) blends into a pale blue-grey background: the rim's
    # cluster lies outside the interior (mask above 0.99, eroded by 2 pixels) and is dropped.
    image = np.where(box(13, 67, 13, 67)[..., None], lab_image(42, 12, 24), lab_image(65, -3, -10))
    masks = np.where(box(13, 67, 13, 67), 1.0, np.where(box(10, 70, 10, 70), 0.6, 0.0))[None]
    artifact = backend.fit_subject(image[None], masks.astype(np.float32), FitConfig(), lambda *_: None)
    model = ColourModel.from_bytes(artifact)
    assert model.pixels == 60 * 60  # the foreground the fit read
    assert misfit(rgb_to_lab(image[11:12, 11:12].reshape(1, 3)), model)[0] > MISFIT_THRESHOLD
    assert misfit(rgb_to_lab(image[40:41, 40:41].reshape(1, 3)), model)[0] < 1
    # Thin masks (4 pixels wide): no interior, so the whole foreground.
    thin = np.zeros((1, SIZE, SIZE), np.float32)
    thin[0, :, 30:34] = 1.0
    model = ColourModel.from_bytes(backend.fit_subject(image[None], thin, FitConfig(), lambda *_: None))
    assert model.pixels == SIZE * 4


def _extra(metadata: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in metadata.items() if k not in ("backend", "format", "colour_space", "pixels")}


def test_fit_steps_below_the_cap_are_the_iterations(backend, brown):
    events = []
    backend.fit_subject(
        brown[0][None], np.ones((1, SIZE, SIZE), np.float32), FitConfig(steps=3), lambda *e: events.append(e)
    )
    assert [(e[0], e[1]) for e in events] == [(1, 3), (2, 3), (3, 3)]


def test_kmeans_finds_separated_clusters_and_survives_duplicates():
    rng = np.random.default_rng(0)
    centres = np.array([[20.0, 0, 0], [60.0, 30, 0], [80.0, -20, 40]])
    points = np.concatenate(
        [c + rng.normal(0, 1, (n, 3)) for c, n in zip(centres, (300, 200, 100), strict=True)]
    )
    found, labels, losses = kmeans(points, 3, 20, np.random.default_rng(1))
    order = np.argsort(found[:, 0])
    np.testing.assert_allclose(found[order], centres, atol=0.3)
    assert sorted(np.bincount(labels, minlength=3).tolist()) == [100, 200, 300]
    assert losses[-1] == pytest.approx(3.0, rel=0.2)  # 3 unit variances
    # Two distinct colours, eight clusters: duplicates stay empty, nothing breaks.
    flat = np.repeat(np.array([[10.0, 0, 0], [90.0, 0, 0]]), 50, axis=0)
    found, labels, losses = kmeans(flat, 8, 5, np.random.default_rng(0))
    assert losses[-1] == 0 and len(np.unique(labels)) == 2


def test_flat_colour_references_make_a_valid_model(backend):
    image = np.full((1, 8, 8, 3), (120, 80, 40), np.uint8)
    model = ColourModel.from_bytes(
        backend.fit_subject(image, np.ones((1, 8, 8), np.float32), FitConfig(), lambda *_: None)
    )
    assert len(model) == 1 and model.weights.tolist() == [1.0]
    np.testing.assert_allclose(model.covariances[0], np.eye(3), atol=1e-5)


def test_the_artifact_header_is_byte_stable():
    tensors = {"b": np.ones(3, np.float32), "a": np.zeros((2, 2), np.float32)}
    metadata = {f"key{i}": str(i) for i in range(12)}
    first = canonical_safetensors(tensors, metadata)
    for _ in range(5):  # safetensors itself writes the metadata in a different order each time
        assert canonical_safetensors(tensors, metadata) == first
    assert read_safetensors_metadata(first) == metadata
    loaded = safetensors.numpy.load(first)
    np.testing.assert_array_equal(loaded["a"], tensors["a"])
    assert int.from_bytes(first[:8], "little") % 8 == 0


@pytest.mark.parametrize(
    ("artifact", "problem"),
    [
        (b"not a model at all", "not a readable safetensors"),
        (b"", "not a readable safetensors"),
        (
            canonical_safetensors({"lora": np.ones(4, np.float32)}, {"backend": "sd-lora", "format": "1"}),
            "backend 'sd-lora'",
        ),
        (safetensors.numpy.save({"weights": np.ones(1, np.float32)}), "backend ''"),
        (
            canonical_safetensors({"weights": np.ones(2, np.float32)}, {"backend": "colour", "format": "1"}),
            "holds tensors",
        ),
        (
            canonical_safetensors(
                {
                    "weights": np.ones(1, np.float32),
                    "means": np.zeros((1, 3), np.float32),
                    "covariances": -np.eye(3, dtype=np.float32)[None],
                },
                {"backend": "colour", "format": "1"},
            ),
            "positive definite",
        ),
        (
            canonical_safetensors(
                {
                    "weights": np.ones(2, np.float32),
                    "means": np.full((2, 3), np.nan, np.float32),
                    "covariances": np.eye(3, dtype=np.float32)[None].repeat(2, 0),
                },
                {"backend": "colour", "format": "1"},
            ),
            "NaN",
        ),
        (
            canonical_safetensors(
                {
                    "weights": np.ones(1, np.float32),
                    "means": np.zeros((1, 3), np.float32),
                    "covariances": np.eye(3, dtype=np.float32)[None],
                },
                {"backend": "colour", "format": "2"},
            ),
            "format '2'",
        ),
    ],
)
def test_bad_artifacts_are_refused(backend, artifact, problem):
    image = np.zeros((1, 4, 4, 3), np.uint8)
    with pytest.raises(InvalidSubject, match=problem):
        backend.inpaint(image, np.ones((1, 4, 4), bool), None, artifact, 0.3, 0)


# ----------------------------------------------------------------------------------------------------
# Sliced transport and its kernel


@pytest.mark.parametrize(("n", "m", "iterations"), [(1, 1, 1), (50, 7, 3), (3000, 500, 12)])
def test_transport_kernel_matches_its_numpy_twin(n, m, iterations):
    rng = np.random.default_rng(n)
    source = rng.normal([50, 0, 0], [15, 10, 10], (m, 3))
    source[: m // 2] = source[0]  # ties
    transport = fit_transport(source, rng.normal([40, 10, 20], 5, (m, 3)), iterations, rng, grid=64)
    points = rng.normal([50, 0, 0], [30, 20, 20], (n, 3))  # also far outside the tables' range
    np.testing.assert_allclose(
        apply_transport(points, transport), apply_transport_reference(points, transport), atol=1e-9
    )


def test_transport_matches_distributions_and_maps_a_flat_colour_to_the_mean():
    rng = np.random.default_rng(0)
    source = rng.normal([60, -5, -20], [5, 3, 3], (4000, 3))
    target = np.concatenate([rng.normal([40, 15, 25], 2, (2800, 3)), rng.normal([85, 3, 15], 2, (1200, 3))])
    moved = apply_transport(source, fit_transport(source, target, 40, rng))
    assert (np.linalg.norm(moved - [40, 15, 25], axis=1) < 8).mean() == pytest.approx(0.7, abs=0.03)
    np.testing.assert_allclose(moved.mean(0), target.mean(0), atol=0.5)
    # Every source colour equal: all go to the target's mean (ties share their targets).
    flat = np.repeat([[50.0, 0, 0]], 100, axis=0)
    moved = apply_transport(flat, fit_transport(flat, target[::40], 10, rng))
    np.testing.assert_allclose(moved, np.repeat(target[::40].mean(0, keepdims=True), 100, axis=0), atol=1e-6)


def test_mixture_transport_kernel_matches_its_numpy_twin_and_moves_clusters_whole():
    rng = np.random.default_rng(0)
    # Source: blue 70%, grey 30%. Model: brown 70%, cream 30%.
    source = np.concatenate([rng.normal([50, -5, -30], 1, (700, 3)), rng.normal([65, 0, 0], 1, (300, 3))])
    model = ColourModel(
        weights=np.array([0.7, 0.3], np.float32),
        means=np.array([[40, 15, 25], [85, 3, 15]], np.float32),
        covariances=np.stack([np.eye(3, dtype=np.float32) * 4] * 2),
        pixels=1000,
    )
    transport = fit_mixture_transport(source, model, 4, rng)
    points = np.concatenate([source, rng.normal(50, 40, (200, 3))])  # also colours far from both
    moved = apply_mixture_transport(points, transport)
    np.testing.assert_allclose(moved, apply_mixture_transport_reference(points, transport), atol=1e-9)
    np.testing.assert_allclose(moved[:700].mean(0), [40, 15, 25], atol=0.5)
    np.testing.assert_allclose(moved[700:1000].mean(0), [85, 3, 15], atol=0.5)
    # The Gaussian maps widen the clusters toward the model's spread (std 1 toward 2; the regularised
    # covariances and the clusters' split into sub-clusters leave the sliced stage the rest to do).
    assert 1.2 < moved[:700].std(0).mean() < 2.2


def test_sinkhorn_finds_the_cheap_plan():
    a, b = np.array([0.7, 0.3]), np.array([0.6, 0.4])
    cost = np.array([[0.0, 10.0], [10.0, 0.0]])
    plan = sinkhorn(a, b, cost)
    np.testing.assert_allclose(plan, [[0.6, 0.1], [0.0, 0.3]], atol=1e-4)
    np.testing.assert_allclose(plan.sum(axis=0), b, atol=1e-9)


def test_lab_round_trip():
    rgb = np.random.default_rng(0).integers(0, 256, (1000, 3), dtype=np.uint8)
    lab = rgb_to_lab(rgb)
    assert lab.dtype == np.float32 and lab.shape == (1000, 3)
    assert 0 <= lab[:, 0].min() and lab[:, 0].max() <= 100
    assert np.abs(lab_to_rgb(lab).astype(int) - rgb).max() <= 1
    np.testing.assert_allclose(rgb_to_lab(np.array([255, 255, 255], np.uint8)), [100, 0, 0], atol=0.1)


# ----------------------------------------------------------------------------------------------------
# Selection and settings


def test_unknown_backend_and_bad_options_are_config_errors():
    assert make_backend("colour").name == "colour"
    with pytest.raises(ConfigError, match=r"'stable-cascade'.*colour"):
        make_backend("stable-cascade")
    with pytest.raises(ConfigError, match="transport_iterations"):
        make_backend("colour", transport_iterations=0)


def test_describe_fields():
    backend = ColourBackend(threads=3)
    assert backend.device == "cpu (3 threads)" and backend.base_model == ""

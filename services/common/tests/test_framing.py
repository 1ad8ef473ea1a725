"""Framing: the fitted orbit centres and fills the views; the checks refuse what the orbit cannot see."""

from pathlib import Path

import numpy as np
import pytest

from services.common import framing
from services.common.cameras import orbit_cameras
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.framing import FILL, fit_framing, view_coverage, visible_points, weighted_quantile
from services.common.gaussians import Gaussians, read_ply
from services.common.rasterizer import rasterize
from services.testing.synthetic import SHARED_ASSETS, textured_blob

ROOT = Path(__file__).parents[3]
SIDE = 64
AZIMUTHS = (0.0, 90.0, 180.0, 270.0)
needs_assets = pytest.mark.skipif(
    not SHARED_ASSETS.is_dir(), reason=f"the real assets are not in {SHARED_ASSETS} (set TIRE_SHARED_DATA)"
)


@pytest.fixture(scope="module")
def blob() -> Gaussians:
    return textured_blob(3000)


def moved(g: Gaussians, scale: float, shift) -> Gaussians:
    """``g`` scaled about the origin by ``scale``, then shifted by ``shift``."""
    return Gaussians(
        means=(g.means * scale + np.asarray(shift, dtype=np.float32)).astype(np.float32),
        log_scales=(g.log_scales + np.float32(np.log(scale))).astype(np.float32),
        quats=g.quats,
        opacity_logits=g.opacity_logits,
        sh=g.sh,
    )


def card(n: int = 3000, seed: int = 0, width: float = 0.6, height: float = 0.4) -> Gaussians:
    """A flat card facing +z: small round Gaussians in a slab 1% as thick as it is wide."""
    rng = np.random.default_rng(seed)
    means = np.stack(
        [
            rng.uniform(-width / 2, width / 2, n),
            rng.uniform(-height / 2, height / 2, n),
            rng.normal(0.0, 0.003, n),
        ],
        axis=1,
    )
    return Gaussians(
        means=means.astype(np.float32),
        log_scales=np.full((n, 3), np.log(0.01), np.float32),
        quats=np.tile(np.array([1, 0, 0, 0], np.float32), (n, 1)),
        opacity_logits=np.full(n, 4.0, np.float32),
        sh=np.zeros((n, 1, 3), np.float32),
    )


def silhouettes(g: Gaussians, f: framing.Framing, azimuths=AZIMUTHS) -> np.ndarray:
    """``[V, SIDE, SIDE]`` bool: where the rendered alpha of the framed orbit exceeds one half."""
    cameras = orbit_cameras(azimuths, SIDE, SIDE, 0.0, f.radius, f.fovy_deg, f.center)
    return rasterize(g, cameras, background=np.ones(3, np.float32)).alpha > 0.5


def spans(mask: np.ndarray) -> tuple[float, np.ndarray]:
    """The silhouette's larger side as a share of the frame, and its box's centre in pixels (x, y)."""
    ys, xs = np.nonzero(mask)
    side = max(np.ptp(ys) + 1, np.ptp(xs) + 1) / mask.shape[0]
    return side, np.array([(xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2])


def test_the_fit_follows_the_asset_when_it_moves_and_grows(blob):
    at_origin = fit_framing(blob, AZIMUTHS)
    shift = (0.8, -0.5, 1.2)
    small = fit_framing(moved(blob, 0.3, shift), AZIMUTHS)
    assert small.center == pytest.approx(0.3 * at_origin.center + shift, abs=1e-3)
    assert small.radius == pytest.approx(0.3 * at_origin.radius, rel=1e-3)
    assert small.extent == pytest.approx(0.3 * at_origin.extent, rel=1e-3)
    assert not small.pinned and small.problems == [] and small.require() == []
    # The blob (semi-axes 0.30, 0.35, 0.28) is centred and frames closer than LGM's 1.5.
    assert np.abs(at_origin.center).max() < 0.02
    assert 0.7 < at_origin.radius < 1.2


def test_the_framed_views_are_filled_and_centred(blob):
    g = moved(blob, 0.3, (0.8, -0.5, 1.2))
    f = fit_framing(g, AZIMUTHS)
    sides = []
    for mask in silhouettes(g, f):
        side, middle = spans(mask)
        sides.append(side)
        assert np.abs(middle - SIDE / 2).max() <= 2.0  # centred within 2 pixels
    # The largest view fills about FILL of the frame; none is small.
    assert FILL - 0.08 <= max(sides) <= FILL + 0.06
    assert min(sides) > 0.7
    # The same asset at LGM's default orbit would be a speck.
    default = fit_framing(g, AZIMUTHS, center=(0, 0, 0), radius=1.5)
    assert default.pinned and default.coverage.max() < 0.05 < f.coverage.min()


def test_coarse_coverage_agrees_with_the_render(blob):
    f = fit_framing(blob, AZIMUTHS)
    rendered = silhouettes(blob, f).mean(axis=(1, 2))
    estimated = view_coverage(
        visible_points(blob), orbit_cameras(AZIMUTHS, SIDE, SIDE, 0.0, f.radius, f.fovy_deg, f.center)
    )
    assert estimated == pytest.approx(rendered, abs=0.1)
    assert f.coverage == pytest.approx(rendered, abs=0.1)  # the framing's own, on its coarse grid


def test_a_flat_card_is_refused_with_its_numbers():
    f = fit_framing(card(), AZIMUTHS)
    assert f.thickness_ratio < 0.05
    (problem,) = f.problems
    assert "flat or thin" in problem and "edge-on" in problem and f"ratio {f.thickness_ratio:.3f}" in problem
    with pytest.raises(FailedPrecondition, match=r"cannot frame this asset\. The asset is flat.*`force`"):
        f.require()
    assert f.require(force=True) == [problem]  # forced: the sentence becomes a warning


def test_an_empty_asset_is_refused_even_with_force(blob):
    faint = Gaussians(blob.means, blob.log_scales, blob.quats, np.full(len(blob), -6.0, np.float32), blob.sh)
    with pytest.raises(
        FailedPrecondition, match=r"empty: none of its 3000 Gaussians has an opacity of at least"
    ):
        fit_framing(faint)


def test_a_pinned_orbit_inside_the_asset_is_refused(blob):
    f = fit_framing(blob, AZIMUTHS, radius=0.1)
    assert f.pinned and f.center == pytest.approx(f.asset_center)
    assert f.behind.min() > 0.2
    assert any("inside the asset or past it" in p and "radius 0.1" in p for p in f.problems)


def test_a_pinned_orbit_that_misses_the_asset_has_empty_views(blob):
    far = moved(blob, 1.0, (2.5, 0.0, 0.0))  # outside LGM's orbit, as fruit_drops is
    f = fit_framing(far, np.arange(0.0, 360.0, 20.0), center=(0, 0, 0), radius=1.5)
    assert (f.coverage < framing.MIN_VIEW_COVERAGE).sum() >= 10
    assert any("views would be (nearly) empty" in p for p in f.problems)
    assert any("inside the asset or past it" in p for p in f.problems)
    assert fit_framing(far, np.arange(0.0, 360.0, 20.0)).problems == []  # fitted, it is fine


def test_pinned_values_are_checked(blob):
    with pytest.raises(InvalidArgument, match=r"`framing\.center` must hold 3 finite values"):
        fit_framing(blob, center=(0.0, 1.0))
    with pytest.raises(InvalidArgument, match=r"`framing\.radius`"):
        fit_framing(blob, radius=-1.0)
    with pytest.raises(InvalidArgument, match=r"`azimuths_deg`"):
        fit_framing(blob, azimuths_deg=[])


def test_a_4d_asset_gets_one_framing_that_holds_every_time_step(blob):
    first, last = moved(blob, 0.5, (0.0, 0.0, 0.0)), moved(blob, 0.5, (0.6, 0.0, 0.0))
    f = fit_framing([first, last], AZIMUTHS)
    assert f.center[0] == pytest.approx(0.3, abs=0.02)
    for g in (first, last):
        for mask in silhouettes(g, f):
            xs = np.nonzero(mask.any(axis=0))[0]
            assert len(xs) and xs.min() > 0 and xs.max() < SIDE - 1  # in the frame, not cut off


def test_weighted_quantile():
    values, weights = np.array([3.0, 1.0, 2.0, 10.0]), np.array([1.0, 1.0, 1.0, 0.01])
    assert weighted_quantile(values, weights, 0.5) == 2.0
    assert weighted_quantile(values, weights, 0.99) == 3.0  # the light outlier is left out
    assert weighted_quantile(values, weights, 1.0) == 10.0


# ----- the real assets (issue 11) ----------------------------------------------------------------


def real(name: str) -> Gaussians:
    path = ROOT / "samples" / name if (ROOT / "samples" / name).exists() else SHARED_ASSETS / name
    return read_ply(path.read_bytes())


ORBIT = np.arange(0.0, 360.0, 20.0)  # the job's default orbit


def test_the_monkey_is_framed_about_as_lgm_frames_it():
    f = fit_framing(real("monkey_lgm.ply"), ORBIT)
    assert f.problems == []
    assert f.radius == pytest.approx(1.5, abs=0.15) and np.abs(f.center).max() < 0.1
    assert f.thickness_ratio > 0.4


@needs_assets
def test_the_hamburger_passes():
    f = fit_framing(real("hamburger_lgm.ply"), ORBIT)
    assert f.problems == [] and f.thickness_ratio > 0.4
    assert f.radius == pytest.approx(1.4, abs=0.15)


@needs_assets
def test_the_donut_is_framed_to_fill_its_views():
    donut = real("donut_unnormalized_quats.ply")
    f = fit_framing(donut, ORBIT)
    assert f.problems == [] and f.thickness_ratio > 0.3
    before = silhouettes(donut, fit_framing(donut, ORBIT, center=(0, 0, 0), radius=1.5))
    after = silhouettes(donut, f)
    # Before: 2% of each frame, a speck 0.18 of the frame across. After: a third to a half of each
    # frame (its hole and its edge-on sides show background), spanning 0.8 of it or more.
    assert before.mean() < 0.04 and max(spans(m)[0] for m in before) < 0.25
    assert after.mean() > 0.3 and min(spans(m)[0] for m in after) > 0.75


@needs_assets
def test_the_fruit_drops_label_is_refused_as_a_card():
    f = fit_framing(real("fruit_drops_full_sh.ply"), ORBIT)
    assert f.thickness_ratio < 0.06
    with pytest.raises(FailedPrecondition, match="flat or thin"):
        f.require()
    # At LGM's orbit it is also outside the orbit: most views empty, cameras past it.
    default = fit_framing(real("fruit_drops_full_sh.ply"), ORBIT, center=(0, 0, 0), radius=1.5)
    assert (default.coverage < framing.MIN_VIEW_COVERAGE).sum() >= 12
    assert len(default.problems) == 3  # flat, cameras past it, empty views

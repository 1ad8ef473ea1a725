"""The ring schedule: known answers for the paper's rings, sweeps' tracking order, the source-only
ablation, adaptive rings on synthetic fractions, and the invariants every plan keeps."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from services.coordinator.schedule import (
    Plan,
    Ring,
    Sweep,
    adaptive_anchors,
    adaptive_candidates,
    divides_circle,
    fixed_plan,
    next_adaptive_ring,
    orbit_azimuths,
    signed_azimuth,
    source_only_plan,
    sweeps,
    views_per_orbit,
)

ORBIT_20 = orbit_azimuths(20.0)


def degrees(plan: Plan, indices) -> list[float]:
    return [plan.signed(i) for i in indices]


def check_plan(plan: Plan) -> None:
    """Invariants of every fixed or source-only plan."""
    views = len(plan.azimuths)
    targets = [t for ring in plan.rings for t in ring.targets]
    assert sorted(targets) == list(range(1, views)), "every non-source view in exactly one ring"
    assert [ring.number for ring in plan.rings] == list(range(1, len(plan.rings) + 1))
    for ring in plan.rings:
        assert ring.targets, "empty rings are skipped"
        assert list(ring.targets) == sorted(
            ring.targets, key=lambda t: (round(abs(plan.signed(t)), 6), plan.signed(t) < 0)
        )
        assert not set(ring.targets) & set(ring.anchors)
        assert sorted(t for sweep in ring.sweeps for t in sweep.targets) == sorted(ring.targets)
        sides = [1 if plan.signed(sweep.targets[0]) > 0 else -1 for sweep in ring.sweeps]
        assert sides in ([1, -1], [1], [-1]), "the + side first"
        for side, sweep in zip(sides, ring.sweeps, strict=True):
            check_sweep(plan, sweep, side)
            assert set(sweep.anchors) <= set(ring.anchors)


def check_sweep(plan: Plan, sweep: Sweep, side: int) -> None:
    views = len(plan.azimuths)
    video = sweep.video
    assert len(set(video)) == len(video), "no duplicates"
    assert video[: len(sweep.anchors)] == sweep.anchors, "anchors first"
    assert [v for v in video if v in sweep.targets] == list(sweep.targets)
    assert set(sweep.targets) == set(video[-len(sweep.targets) :]), "targets last"
    assert all(side * plan.signed(t) > 0 for t in sweep.targets), "one side only"
    outward = [round(abs(plan.signed(t)), 6) for t in sweep.targets]
    assert outward == sorted(outward), "targets by increasing |azimuth|"
    # From the last anchor on, the video steps to the neighbouring view every frame.
    walk = video[len(sweep.anchors) - 1 :]
    assert all((b - a) % views == side % views for a, b in itertools.pairwise(walk))


# ----------------------------------------------------------------------------------------------------
# The orbit


def test_orbit_azimuths_start_at_the_source_and_step_evenly():
    assert ORBIT_20 == tuple(float(20 * i) for i in range(18))
    assert orbit_azimuths(90.0) == (0.0, 90.0, 180.0, 270.0)
    assert views_per_orbit(22.5) == 16


def test_a_float32_step_gives_an_exact_orbit():
    azimuths = orbit_azimuths(float(np.float32(7.2)))  # 7.1999998..., as a proto field holds it
    assert len(azimuths) == 50
    assert azimuths[25] == 180.0 and azimuths[1] == pytest.approx(7.2)


@pytest.mark.parametrize("step", [7.0, 0.0, -20.0, 270.0, 360.0, float("nan"), float("inf")])
def test_a_step_that_does_not_divide_the_circle_is_refused(step):
    assert not divides_circle(step)
    with pytest.raises(ValueError, match="must divide 360"):
        orbit_azimuths(step)


def test_signed_azimuth_wraps_to_minus_180_exclusive_180_inclusive():
    assert [signed_azimuth(a) for a in (0, 20, 180, 200, 340, 360, -90)] == [0, 20, 180, -160, -20, 0, -90]
    plan = fixed_plan(20.0)
    assert (plan.signed(0), plan.signed(9), plan.signed(17)) == (0.0, 180.0, -20.0)


# ----------------------------------------------------------------------------------------------------
# Fixed rings


def test_paper_rings_at_step_20():
    plan = fixed_plan(20.0)
    check_plan(plan)
    assert plan.azimuths == ORBIT_20
    ring1, ring2, ring3 = plan.rings
    assert sorted(plan.azimuths[t] for t in ring1.targets) == [20, 340]
    assert sorted(plan.azimuths[t] for t in ring2.targets) == [40, 60, 80, 280, 300, 320]
    assert sorted(plan.azimuths[t] for t in ring3.targets) == list(range(100, 261, 20))
    assert ring1.targets == (1, 17)
    assert ring2.targets == (2, 16, 3, 15, 4, 14)
    assert ring3.targets == (5, 13, 6, 12, 7, 11, 8, 10, 9)
    assert degrees(plan, ring3.targets)[-1] == 180.0  # the back view belongs to the + side, and is last
    assert ring1.anchors == (0,)
    assert ring2.anchors == ring1.targets
    assert ring3.anchors == ring2.targets


def test_paper_rings_sweep_from_the_anchors_outward():
    ring1, ring2, ring3 = fixed_plan(20.0).rings
    assert ring1.sweeps == (Sweep((0, 1), (1,), (0,)), Sweep((0, 17), (17,), (0,)))
    assert ring2.sweeps == (
        Sweep(video=(1, 2, 3, 4), targets=(2, 3, 4), anchors=(1,)),
        Sweep(video=(17, 16, 15, 14), targets=(16, 15, 14), anchors=(17,)),
    )
    assert ring3.sweeps == (
        Sweep(video=(2, 3, 4, 5, 6, 7, 8, 9), targets=(5, 6, 7, 8, 9), anchors=(2, 3, 4)),
        Sweep(video=(16, 15, 14, 13, 12, 11, 10), targets=(13, 12, 11, 10), anchors=(16, 15, 14)),
    )


def test_an_empty_ring_is_skipped_and_numbers_stay_consecutive():
    plan = fixed_plan(45.0)  # no view in (0, 20]
    check_plan(plan)
    assert [ring.number for ring in plan.rings] == [1, 2]
    ring1, ring2 = plan.rings
    assert degrees(plan, ring1.targets) == [45, -45, 90, -90]
    assert ring1.anchors == (0,)
    assert degrees(plan, ring2.targets) == [135, -135, 180]
    assert ring2.anchors == ring1.targets
    assert ring2.sweeps == (Sweep((1, 2, 3, 4), (3, 4), (1, 2)), Sweep((7, 6, 5), (5,), (7, 6)))


def test_custom_limits():
    plan = fixed_plan(20.0, (10.0, 20.0, 30.0, 45.0, 180.0))  # (0, 10] and (20, 30] are empty
    check_plan(plan)
    assert [degrees(plan, ring.targets) for ring in plan.rings[:2]] == [[20, -20], [40, -40]]
    assert plan.rings[2].anchors == (2, 16)
    assert len(plan.rings) == 3

    one_ring = fixed_plan(30.0, [180.0])
    check_plan(one_ring)
    assert len(one_ring.rings) == 1 and one_ring.rings[0].anchors == (0,)


def test_float32_limits_include_the_view_on_the_limit():
    step = float(np.float32(7.2))
    limits = [float(np.float32(7.2)), float(np.float32(14.4)), 180.0]  # 7.1999998..., 14.3999996...
    plan = fixed_plan(step, limits)
    check_plan(plan)
    assert plan.rings[0].targets == (1, 49)
    assert plan.rings[1].targets == (2, 48)


def test_step_90_reaches_the_back_from_the_plus_side():
    plan = fixed_plan(90.0)
    check_plan(plan)
    ring1, ring2 = plan.rings
    assert (ring1.targets, ring2.targets, ring2.anchors) == ((1, 3), (2,), (1, 3))
    assert ring2.sweeps == (Sweep((1, 2), (2,), (1,)),)


@pytest.mark.parametrize(
    "step", [5.0, 6.0, 7.2, 8.0, 9.0, 10.0, 12.0, 15.0, 22.5, 24.0, 40.0, 60.0, 72.0, 90.0]
)
@pytest.mark.parametrize("limits", [(20.0, 90.0, 180.0), (180.0,), (5.0, 50.0, 100.0, 179.0, 180.0)])
def test_every_fixed_plan_keeps_the_invariants(step, limits):
    plan = fixed_plan(step, limits)
    check_plan(plan)
    for previous, ring in itertools.pairwise(plan.rings):
        assert ring.anchors == previous.targets
        assert min(abs(plan.signed(t)) for t in ring.targets) > max(abs(plan.signed(a)) for a in ring.anchors)


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ((20.0, 90.0), "must end at 180"),
        ((), "must end at 180"),
        ((90.0, 20.0, 180.0), "increase strictly"),
        ((20.0, 20.0, 180.0), "increase strictly"),
        ((0.0, 180.0), "increase strictly"),
        ((-5.0, 180.0), "increase strictly"),
    ],
)
def test_bad_limits_are_refused(limits, message):
    with pytest.raises(ValueError, match=message):
        fixed_plan(20.0, limits)


# ----------------------------------------------------------------------------------------------------
# Source only


def test_source_only_anchors_every_view_on_the_source():
    plan = source_only_plan(20.0)
    check_plan(plan)
    (ring,) = plan.rings
    assert ring.number == 1 and ring.anchors == (0,)
    assert ring.targets == (1, 17, 2, 16, 3, 15, 4, 14, 5, 13, 6, 12, 7, 11, 8, 10, 9)
    assert ring.sweeps == (
        Sweep(tuple(range(10)), tuple(range(1, 10)), (0,)),
        Sweep((0, 17, 16, 15, 14, 13, 12, 11, 10), (17, 16, 15, 14, 13, 12, 11, 10), (0,)),
    )


# ----------------------------------------------------------------------------------------------------
# Sweeps on their own


def test_a_side_without_its_own_anchor_uses_the_nearest_anchors():
    # The back view reached from the - side: the walk goes from -160 to 180.
    assert sweeps(ORBIT_20, (9,), (10, 14)) == (Sweep((10, 9), (9,), (10,)),)
    # 20 degrees reached from -40 walks through -20 and the source.
    assert sweeps(ORBIT_20, (1,), (16,)) == (Sweep((16, 17, 0, 1), (1,), (16,)),)
    # An anchor on the side's own part of the orbit wins over a nearer one elsewhere.
    assert sweeps(ORBIT_20, (9,), (7, 10)) == (Sweep((7, 8, 9), (9,), (7,)),)
    assert sweeps(ORBIT_20, (17,), (2, 14)) == (Sweep((14, 15, 16, 17), (17,), (14,)),)


def test_anchors_beyond_the_targets_walk_inward():
    assert sweeps(ORBIT_20, (2, 3), (5,)) == (Sweep((5, 4, 3, 2), (3, 2), (5,)),)


def test_the_source_anchors_both_sides_and_duplicates_collapse():
    assert sweeps(ORBIT_20, [1, 1, 17], [0, 0]) == (Sweep((0, 1), (1,), (0,)), Sweep((0, 17), (17,), (0,)))
    assert sweeps(ORBIT_20, (), (0,)) == ()


@pytest.mark.parametrize(
    ("targets", "anchors", "message"),
    [
        ((0, 1), (2,), "never a target"),
        ((1, 2), (2,), "disjoint"),
        ((1,), (), "at least one anchor"),
        ((18,), (0,), "orbit indices"),
        ((2,), (1, 3), "inside or all outside"),
    ],
)
def test_bad_sweeps_are_refused(targets, anchors, message):
    with pytest.raises(ValueError, match=message):
        sweeps(ORBIT_20, targets, anchors)


def test_an_uneven_orbit_is_refused():
    with pytest.raises(ValueError, match="even orbit"):
        sweeps((0.0, 20.0, 50.0), (1,), (0,))


# ----------------------------------------------------------------------------------------------------
# Adaptive rings


def fractions_by(function, done=(0,)):
    return {i: function(abs(signed_azimuth(ORBIT_20[i]))) for i in adaptive_candidates(ORBIT_20, set(done))}


def test_low_fractions_make_a_wide_ring():
    ring = next_adaptive_ring(ORBIT_20, 1, {0}, fractions_by(lambda a: 0.0), 0.35, 20.0)
    assert sorted(ring.targets) == list(range(1, 18))
    assert ring.anchors == (0,)
    assert ring.sweeps == source_only_plan(20.0).rings[0].sweeps


def test_high_fractions_make_exactly_the_minimum_width():
    high = fractions_by(lambda a: 0.9)
    assert next_adaptive_ring(ORBIT_20, 1, {0}, high, 0.35, 20.0).targets == (1, 17)
    assert next_adaptive_ring(ORBIT_20, 1, {0}, high, 0.35, 40.0).targets == (1, 17, 2, 16)
    assert next_adaptive_ring(ORBIT_20, 1, {0}, high, 0.35, 50.0).targets == (1, 17, 2, 16)
    # Fractions are not even needed to advance.
    assert next_adaptive_ring(ORBIT_20, 1, {0}, {}, 0.35, 20.0).targets == (1, 17)


def test_the_ring_stops_at_the_first_view_over_the_threshold():
    growing = fractions_by(lambda a: a / 180.0)  # 60 -> 0.33, 80 -> 0.44
    ring = next_adaptive_ring(ORBIT_20, 1, {0}, growing, 0.35, 20.0)
    assert degrees(fixed_plan(20.0), ring.targets) == [20, -20, 40, -40, 60, -60]
    # A low fraction past a high one does not join: the run is contiguous.
    gap = {1: 0.1, 2: 0.9, 3: 0.1, 17: 0.1, 16: 0.1}
    assert next_adaptive_ring(ORBIT_20, 1, {0}, gap, 0.35, 20.0).targets == (1, 17, 16)


def test_sides_grow_independently_and_the_anchors_are_the_frontiers():
    done = {0, 1, 2, 17}
    fractions = {i: 0.0 for i in adaptive_candidates(ORBIT_20, done)}
    fractions[4] = 0.5
    ring = next_adaptive_ring(ORBIT_20, 2, done, fractions, 0.35, 20.0)
    assert ring.number == 2
    assert ring.anchors == adaptive_anchors(ORBIT_20, done) == (2, 17)
    assert ring.targets == (16, 3, 15, 14, 13, 12, 11, 10)  # -40 before 60
    assert ring.sweeps == (
        Sweep((2, 3), (3,), (2,)),
        Sweep((17, 16, 15, 14, 13, 12, 11, 10), (16, 15, 14, 13, 12, 11, 10), (17,)),
    )


def test_given_anchors_are_recorded_and_used():
    done = {0, 1, 2, 16, 17}
    ring = next_adaptive_ring(ORBIT_20, 2, done, {}, 0.35, 20.0, anchors=(1, 17, 2, 16))
    assert ring.anchors == (1, 17, 2, 16) and ring.targets == (3, 15)
    assert ring.sweeps == (Sweep((1, 2, 3), (3,), (1, 2)), Sweep((17, 16, 15), (15,), (17, 16)))


def test_a_wider_threshold_never_makes_a_narrower_ring():
    rng = np.random.default_rng(0)
    for _ in range(20):
        fractions = {i: float(f) for i, f in zip(range(1, 18), rng.uniform(0, 1, 17), strict=True)}
        previous: set[int] = set()
        for threshold in (0.1, 0.3, 0.5, 0.7, 0.9, 1.0):
            targets = set(next_adaptive_ring(ORBIT_20, 1, {0}, fractions, threshold, 20.0).targets)
            assert previous <= targets
            previous = targets
        assert previous == set(range(1, 18))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("step", "min_width"), [(20.0, 20.0), (15.0, 40.0), (45.0, 45.0), (90.0, 180.0)])
def test_adaptive_rings_terminate_covering_the_orbit(seed, step, min_width):
    azimuths = orbit_azimuths(step)
    plan = Plan(azimuths, ())
    rng = np.random.default_rng(seed)
    done = {0}
    seen: list[int] = []
    number = 1
    while candidates := adaptive_candidates(azimuths, done):
        anchors = adaptive_anchors(azimuths, done)
        fractions = {i: float(rng.uniform(0, 0.6)) for i in candidates}
        ring = next_adaptive_ring(azimuths, number, done, fractions, 0.35, min_width)
        assert ring.number == number and ring.anchors == anchors
        assert ring.targets and set(ring.targets) <= set(candidates), "the schedule advances"
        # Each side moves outward: every target lies beyond every done view of its side.
        for t in ring.targets:
            side = 1 if plan.signed(t) > 0 else -1
            assert all(abs(plan.signed(t)) > abs(plan.signed(d)) for d in done if side * plan.signed(d) > 0)
        for sweep in ring.sweeps:
            check_sweep(plan, sweep, 1 if plan.signed(sweep.targets[0]) > 0 else -1)
        seen += ring.targets
        done |= set(ring.targets)
        number += 1
        assert number <= len(azimuths)
    assert sorted(seen) == list(range(1, len(azimuths)))


def test_the_back_view_is_the_last_of_the_plus_side():
    done = set(range(18)) - {9}
    assert adaptive_candidates(ORBIT_20, done) == (9,)
    assert adaptive_anchors(ORBIT_20, done) == (8,)
    ring = next_adaptive_ring(ORBIT_20, 5, done, {9: 1.0}, 0.35, 20.0)
    assert ring == Ring(5, (9,), (8,), (Sweep((8, 9), (9,), (8,)),))


@pytest.mark.parametrize(
    ("done", "kwargs", "message"),
    [
        ({1, 17}, {}, "always done"),
        ({0, 2}, {}, "contiguous"),
        (set(range(18)), {}, "already repaired"),
        ({0}, {"min_width_deg": 10.0}, "at least the orbit step"),
        ({0}, {"number": 0}, "start at 1"),
        ({0}, {"anchors": (1,)}, "must be done views"),
    ],
)
def test_bad_adaptive_arguments_are_refused(done, kwargs, message):
    arguments = {"number": 1, "fractions": {}, "max_fraction": 0.35, "min_width_deg": 20.0, **kwargs}
    with pytest.raises(ValueError, match=message):
        next_adaptive_ring(ORBIT_20, done=done, **arguments)

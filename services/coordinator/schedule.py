"""The ring schedule as data: which orbit views each ring repairs, from which anchors, in what order.

A ``Plan`` lists the rings of a job; a ``Ring`` lists its targets, its anchors and its sweeps; a
``Sweep`` is one ``LocateUnobserved`` call (an orbit video from the anchors out to the targets on one
side of the source). Everything is an orbit index, so plans are compared against known answers in tests
without running a stage, and the pipeline only enacts them.

Conventions:
- The orbit has ``n = 360 / step`` views. View ``i`` has azimuth ``i * 360 / n`` degrees, in [0, 360)
  (``i * step``, computed without accumulating float error). View 0, azimuth 0, is the source (front)
  view. Azimuths follow the LGM convention of ``services.common.cameras`` (90 looks from +x).
- For rings and sides an azimuth is wrapped to (-180, 180]: 340 is -20, and 180 stays 180. The + side
  is (0, 180] (the back view, 180, belongs to it), the - side is (-180, 0). "Outward" means away from
  the source along a side, that is by increasing |azimuth|.
- Targets of a ring are listed by increasing |azimuth|, the + view before the - view at equal
  |azimuth|; sweeps come + side first.
- Ring limits and widths are compared with a tolerance of ``ANGLE_TOLERANCE_DEG``, because they reach
  here as float32 proto fields (7.2 arrives as 7.1999998): a view within it of a limit is inside.

Arguments that break these rules (an uneven orbit, an index out of range, a target that is also an
anchor) raise ``ValueError``: they are programming errors, since ``services.coordinator.spec`` checks
what a client sends before a plan is made.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

ANGLE_TOLERANCE_DEG = 1e-4
# Relative tolerance of "360 is a multiple of the step": float32 steps such as 7.2 are off by ~3e-8.
STEP_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Sweep:
    """One LocateUnobserved call: an orbit video from the anchors out to the targets on one side.

    Attributes:
        video: orbit indices in tracking order: the anchors (farthest from the targets first), then every
            orbit view between the last anchor and the targets, then the targets by increasing distance
            from the anchors (for the rings of a plan: by increasing |azimuth|). No duplicates; a
            backward tracker follows it from the targets back to the anchors.
        targets: orbit indices of the views to locate, a subset of ``video``, in video order.
        anchors: orbit indices of the views that hold the appearance, a subset of ``video`` disjoint
            from ``targets``, in video order.
    """

    video: tuple[int, ...]
    targets: tuple[int, ...]
    anchors: tuple[int, ...]


@dataclass(frozen=True)
class Ring:
    """One ring of the schedule.

    Attributes:
        number: 1 for the ring next to the source, consecutive over the rings a plan emits.
        targets: orbit indices of all targets (both sides), by increasing |azimuth|, + before -.
        anchors: orbit indices of the views the ring is anchored on (already repaired, or the source).
        sweeps: one per side that has targets: the + side first, then the - side.
    """

    number: int
    targets: tuple[int, ...]
    anchors: tuple[int, ...]
    sweeps: tuple[Sweep, ...]


@dataclass(frozen=True)
class Plan:
    """The orbit and its rings.

    Attributes:
        azimuths: degrees, index ``i`` at ``i * step``, in [0, 360); index 0 is the source view.
        rings: in order; every non-source view is a target of exactly one ring (empty in adaptive mode,
            where rings are chosen one at a time with ``next_adaptive_ring``).
    """

    azimuths: tuple[float, ...]
    rings: tuple[Ring, ...]

    def signed(self, index: int) -> float:
        """The azimuth of orbit view ``index`` wrapped to (-180, 180], degrees; views ``i`` and ``n - i``
        give exactly opposite values."""
        views = len(self.azimuths)
        return _position(index % views, views) * 360.0 / views


def signed_azimuth(azimuth_deg: float) -> float:
    """``azimuth_deg`` wrapped to (-180, 180] degrees: 340 -> -20, 180 -> 180, -90 -> -90."""
    wrapped = azimuth_deg % 360.0
    return wrapped - 360.0 if wrapped > 180.0 + ANGLE_TOLERANCE_DEG else wrapped


def divides_circle(step_deg: float) -> bool:
    """Whether 360 is a whole multiple (at least 2) of ``step_deg``, to a relative ``STEP_TOLERANCE``."""
    if not (math.isfinite(step_deg) and 0 < step_deg <= 180):
        return False
    views = round(360.0 / step_deg)
    return views >= 2 and abs(360.0 / step_deg - views) <= STEP_TOLERANCE * views


def views_per_orbit(step_deg: float) -> int:
    """``360 / step_deg`` as an integer: the number of orbit views.

    Raises:
        ValueError: 360 is not a whole multiple (at least 2) of ``step_deg``.
    """
    if not divides_circle(step_deg):
        raise ValueError(f"The orbit step must divide 360 into at least 2 views, got {step_deg!r}.")
    return round(360.0 / step_deg)


def orbit_azimuths(step_deg: float) -> tuple[float, ...]:
    """Azimuths of the orbit views, degrees: ``i * 360 / n`` for ``i`` in ``0..n-1``, ``n = 360 / step``.

    ``orbit_azimuths(20.0) == (0.0, 20.0, ..., 340.0)``, 18 views; index 0 is the source view.
    """
    views = views_per_orbit(step_deg)
    return tuple(i * 360.0 / views for i in range(views))


def fixed_plan(step_deg: float, limits_deg: Sequence[float] = (20.0, 90.0, 180.0)) -> Plan:
    """The paper's progressive rings over an orbit of step ``step_deg``.

    Ring k targets the views with |signed azimuth| in (limit[k-1], limit[k]] (limit[0] = 0, so the
    source is never a target). Ring 1 is anchored on the source; ring k > 1 on the targets of the ring
    before it. A ring without views (step 45 has none in (0, 20]) is skipped, and the numbers of the
    emitted rings stay consecutive. The last limit is 180, so every non-source view is a target of
    exactly one ring.

    Args:
        step_deg: orbit step, degrees; 360 must be a multiple of it.
        limits_deg: outer limit of each ring, degrees, strictly increasing, in (0, 180], the last 180.

    Raises:
        ValueError: a bad step or bad limits.
    """
    azimuths = orbit_azimuths(step_deg)
    limits = [float(limit) for limit in limits_deg]
    if not limits or limits[-1] != 180.0:
        raise ValueError(f"Ring limits must end at 180 degrees, got {limits!r}.")
    if any(not 0.0 < limit <= 180.0 for limit in limits) or any(
        b <= a for a, b in itertools.pairwise(limits)
    ):
        raise ValueError(f"Ring limits must increase strictly within (0, 180] degrees, got {limits!r}.")

    views = len(azimuths)
    order = _ring_order(views)
    rings: list[Ring] = []
    anchors: tuple[int, ...] = (0,)
    inner = 0.0
    for outer in limits:
        targets = tuple(
            sorted(
                (
                    i
                    for i in range(1, views)
                    if inner + ANGLE_TOLERANCE_DEG
                    < abs(signed_azimuth(azimuths[i]))
                    <= outer + ANGLE_TOLERANCE_DEG
                ),
                key=order,
            )
        )
        inner = outer
        if not targets:
            continue
        rings.append(Ring(len(rings) + 1, targets, anchors, sweeps(azimuths, targets, anchors)))
        anchors = targets
    return Plan(azimuths, tuple(rings))


def source_only_plan(step_deg: float) -> Plan:
    """The no-progressive ablation: one ring targeting every non-source view, anchored on the source."""
    azimuths = orbit_azimuths(step_deg)
    targets = tuple(sorted(range(1, len(azimuths)), key=_ring_order(len(azimuths))))
    return Plan(azimuths, (Ring(1, targets, (0,), sweeps(azimuths, targets, (0,))),))


def sweeps(azimuths: Sequence[float], targets: Iterable[int], anchors: Iterable[int]) -> tuple[Sweep, ...]:
    """The LocateUnobserved calls that locate ``targets`` against ``anchors``: one per side with targets.

    A side's anchors are the ``anchors`` on that side (or at azimuth 0, the source). When there are none
    (a side reached only from the other side's anchors), the anchors nearest in azimuth to the side's
    targets are used (all that tie, so at least one). The video walks the orbit from those anchors through
    every view in between to the side's farthest target.

    Args:
        azimuths: the orbit, as ``orbit_azimuths`` makes it.
        targets: orbit indices to locate; never the source.
        anchors: orbit indices already repaired (or the source), disjoint from ``targets``.

    Returns:
        The + side's sweep (when it has targets), then the - side's.

    Raises:
        ValueError: an index out of range, the source as a target, a target that is also an anchor,
            targets without anchors, or a side whose anchors lie both inside and outside its targets.
    """
    views = _orbit_size(azimuths)
    target_set = _index_set(targets, views, "targets")
    anchor_set = _index_set(anchors, views, "anchors")
    if 0 in target_set:
        raise ValueError("The source view (index 0) is never a target.")
    if target_set & anchor_set:
        raise ValueError(
            f"Targets and anchors must be disjoint, both hold {sorted(target_set & anchor_set)}."
        )
    if target_set and not anchor_set:
        raise ValueError(f"Targets {sorted(target_set)} need at least one anchor.")
    result = []
    for side in (1, -1):
        side_targets = [t for t in target_set if side * _position(t, views) > 0]
        if side_targets:
            result.append(_sweep(views, side, side_targets, anchor_set))
    return tuple(result)


def adaptive_candidates(azimuths: Sequence[float], done: Collection[int]) -> tuple[int, ...]:
    """The orbit views not yet repaired, by increasing |azimuth|, + before -: what adaptive rings may take."""
    views = _orbit_size(azimuths)
    done_set = _index_set(done, views, "done")
    return tuple(sorted((i for i in range(views) if i not in done_set), key=_ring_order(views)))


def adaptive_anchors(azimuths: Sequence[float], done: Collection[int]) -> tuple[int, ...]:
    """The frontier of the repaired region: per side with views left, the outermost done view of that side
    (the source while a side has none), + side first, without duplicates. ``(0,)`` before ring 1."""
    views = _orbit_size(azimuths)
    done_set = _done_set(done, views)
    frontiers = []
    for side in (1, -1):
        side_views = _side_views(views, side)
        reached = _reached(side_views, done_set)
        if reached < len(side_views):
            frontiers.append(side_views[reached - 1] if reached else 0)
    return tuple(dict.fromkeys(frontiers))


def next_adaptive_ring(
    azimuths: Sequence[float],
    number: int,
    done: Collection[int],
    fractions: Mapping[int, float],
    max_fraction: float,
    min_width_deg: float,
    anchors: Sequence[int] | None = None,
) -> Ring:
    """The next adaptive ring: on each side, as far out as targets stay mostly observed.

    On each side with views left, the ring takes the run of views next to the repaired region (going
    outward) whose unobserved fraction is at most ``max_fraction``, but at least every view within
    ``min_width_deg`` of the side's frontier (the outermost done view, or the source), so the schedule
    always advances even where every fraction is high. The run stops at the first view whose fraction
    is above the threshold or missing from ``fractions`` (so the caller may measure only a window).

    Args:
        azimuths: the orbit, as ``orbit_azimuths`` makes it.
        number: the ring's number, from 1.
        done: orbit indices already repaired: the source and the earlier rings' targets. On each side
            they must be contiguous from the source outward (as earlier rings make them).
        fractions: unobserved fraction in [0, 1] of each remaining view, located against ``anchors``.
        max_fraction: largest fraction a view beyond the minimum width may have to join.
        min_width_deg: degrees, at least the orbit step: the ring reaches at least this far past the
            frontier on each side with views left.
        anchors: the views the fractions were located against, recorded as the ring's anchors, for
            example the most recent ring's targets. Default: ``adaptive_anchors(azimuths, done)``, the
            frontier view of each side (the source for ring 1).

    Raises:
        ValueError: nothing is left to repair, ``done`` lacks the source or is not contiguous, a bad
            number, width or anchor.
    """
    views = _orbit_size(azimuths)
    step_deg = 360.0 / views
    done_set = _done_set(done, views)
    if number < 1:
        raise ValueError(f"Ring numbers start at 1, got {number!r}.")
    if not min_width_deg >= step_deg - ANGLE_TOLERANCE_DEG:
        raise ValueError(
            f"The minimum ring width must be at least the orbit step {step_deg}, got {min_width_deg!r}."
        )
    if anchors is None:
        anchors = adaptive_anchors(azimuths, done_set)
    elif not anchors or not set(anchors) <= done_set:
        raise ValueError(f"Anchors must be done views, got {list(anchors)!r}.")

    targets: list[int] = []
    for side in (1, -1):
        side_views = _side_views(views, side)
        reached = _reached(side_views, done_set)
        remaining = side_views[reached:]
        if not remaining:
            continue
        # Side views are one step apart, so remaining[k] lies (k + 1) steps past the frontier.
        within_width = sum(
            1 for k in range(len(remaining)) if (k + 1) * step_deg <= min_width_deg + ANGLE_TOLERANCE_DEG
        )
        mostly_observed = 0
        for view in remaining:
            if not fractions.get(view, math.nan) <= max_fraction:  # NaN or missing also ends the run
                break
            mostly_observed += 1
        targets += remaining[: max(within_width, mostly_observed)]
    if not targets:
        raise ValueError("Every orbit view is already repaired: there is no next ring.")
    ring_targets = tuple(sorted(targets, key=_ring_order(views)))
    ring_anchors = tuple(dict.fromkeys(anchors))
    return Ring(number, ring_targets, ring_anchors, sweeps(azimuths, ring_targets, ring_anchors))


# ----------------------------------------------------------------------------------------------------
# Orbit positions. A view's position is its signed azimuth in steps: i for i <= n/2 (the + side, with
# the back view n/2 when n is even), i - n beyond. Along a side, x = side * position is the number of
# steps outward from the source.


def _position(index: int, views: int) -> int:
    return index if 2 * index <= views else index - views


def _ring_order(views: int):
    """Sort key: increasing |azimuth|, the + view before the - view."""
    return lambda index: (abs(_position(index, views)), _position(index, views) < 0)


def _side_views(views: int, side: int) -> list[int]:
    """The non-source views of one side, outward from the source."""
    return sorted((i for i in range(1, views) if side * _position(i, views) > 0), key=_ring_order(views))


def _reached(side_views: list[int], done: set[int]) -> int:
    """How many of a side's views are done, checking that they are the innermost ones."""
    count = sum(1 for view in side_views if view in done)
    if any(view not in done for view in side_views[:count]):
        raise ValueError(
            f"Done views must be contiguous from the source outward on each side, got {sorted(done)}."
        )
    return count


def _orbit_size(azimuths: Sequence[float]) -> int:
    """``len(azimuths)``, checking that they are ``orbit_azimuths`` of some step."""
    views = len(azimuths)
    if views < 2 or any(
        abs(signed_azimuth(azimuth - i * 360.0 / views)) > ANGLE_TOLERANCE_DEG
        for i, azimuth in enumerate(azimuths)
    ):
        raise ValueError(
            f"Azimuths must be an even orbit starting at 0 (from orbit_azimuths), got {list(azimuths)!r}."
        )
    return views


def _index_set(indices: Iterable[int], views: int, name: str) -> set[int]:
    result = set(indices)
    if any(not 0 <= i < views for i in result):
        raise ValueError(f"{name} must be orbit indices in 0..{views - 1}, got {sorted(result)}.")
    return result


def _done_set(done: Collection[int], views: int) -> set[int]:
    result = _index_set(done, views, "done")
    if 0 not in result:
        raise ValueError(f"The source view (index 0) is always done, got done = {sorted(result)}.")
    return result


def _sweep(views: int, side: int, targets: list[int], anchors: set[int]) -> Sweep:
    """The sweep of one side: anchors, the views between, the targets, as one walk along the orbit."""
    outward = {t: side * _position(t, views) for t in targets}  # 1..n/2, steps from the source
    # Each anchor's outward coordinate; the source (0) and the side's own anchors lie in [0, n/2].
    placed = {a: side * _position(a, views) for a in anchors if side * _position(a, views) >= 0}
    if not placed:
        # Reached from elsewhere: unwrap each anchor to the coordinate nearest the targets, keep the
        # nearest anchors (ties included).
        def nearest(anchor: int) -> tuple[int, int]:
            x0 = side * _position(anchor, views)
            x = min((x0 - views, x0, x0 + views), key=lambda x: min(abs(x - t) for t in outward.values()))
            return x, min(abs(x - t) for t in outward.values())

        unwrapped = {a: nearest(a) for a in anchors}
        best = min(distance for _, distance in unwrapped.values())
        placed = {a: x for a, (x, distance) in unwrapped.items() if distance == best}

    inner, outer = min(outward.values()), max(outward.values())
    if all(x < inner for x in placed.values()):
        ordered = sorted(placed, key=placed.__getitem__)
        walk = range(max(placed.values()) + 1, outer + 1)
    elif all(x > outer for x in placed.values()):
        ordered = sorted(placed, key=placed.__getitem__, reverse=True)
        walk = range(min(placed.values()) - 1, inner - 1, -1)
    else:
        raise ValueError(
            f"The anchors {sorted(placed)} of a side must all lie inside or all outside its targets "
            f"{sorted(targets)}."
        )
    between = [(side * x) % views for x in walk]
    target_set = set(targets)
    return Sweep(
        video=(*ordered, *between),
        targets=tuple(v for v in between if v in target_set),
        anchors=tuple(ordered),
    )

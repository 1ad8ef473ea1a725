"""Repair quality against ground truth: does a job restore what drifted, and leave alone what did not?

    python -m benchmarks.quality [--objects blob,head] [--resolution 256] [--gaussians 12000]
                                 [--controls hamburger,monkey,donut,fruit | none] [--no-4d] [--modes]
                                 [--quick] [--out out/bench/quality]

Method (the measures are in ``benchmarks.quality_metrics``):

1. Ground truth. Five procedural objects of ``services.testing.synthetic.OBJECTS`` (``textured_blob``: fur,
   stripes and a face; ``banded_body``: green, a yellow belt, a dark base; ``zebra``: black and white
   stripes winding all round; ``spotted``: black spots on red on every side; ``head``: a face in front,
   hair on the top, sides and back), each ``--gaussians`` flat opaque Gaussians of SH degree 0 on a
   closed surface of radius about 0.35 at the origin, front toward +z, seed 0.
2. Drift as LGM drifts: the asset to repair is ``corrupt_unseen(truth, seed=k)``: back and sides
   blurred, desaturated, tinted pale steel blue-grey and blotchy; what the front camera sees is kept
   bit for bit. The reference image is the truth's front view (``samples.make_samples.front_reference``).
3. Runs per object, each a whole job (``Bench.run_job``: the spec resolved and framed by
   ``frame_job`` as SubmitJob does, then run) in this process with the CPU profile's backends
   (``services.embedded.PROFILES["cpu"]``, each at its default strength) and the spec's other defaults
   (fixed rings [20, 90, 180], orbit step 20, resolution ``--resolution``, seed 0):
   - "do nothing": the drifted asset itself, no job;
   - "repair": the drifted asset through a job;
   - "clean": the truth itself through a job (do no harm: it should come back unchanged);
   - with ``--modes``: the drifted asset through jobs with adaptive rings and with source-only rings.
4. Measures, against renders of the truth on white with the CPU rasterizer, at a framing that fills the
   view (the truth's robust centre moved to the origin and its robust radius scaled to 0.5; the same
   similarity for every asset compared), from held-out cameras (``HELD_OUT``: none on the job's orbit)
   and the front (azimuth 0, elevation 0); foreground = truth alpha >= 0.9:
   - held-out fg PSNR: one MSE over every held-out view's foreground pixels, RGB in [0, 1];
   - back and front Delta E: the mean per-pixel CIE76 Delta E (CIELab D65) over the foreground pixels
     of the held-out views facing back (azimuth 130-230) and front (330-30 at elevation 0, plus the
     front view);
   - front PSNR: the front view's foreground PSNR.
5. Controls: real generator outputs without ground truth (``--assets``): their own input is the
   reference of every measure ("vs input": how much the job changed), at a framing fitted to the
   input. hamburger_lgm needs no repair (back Delta E vs input < 3; no lettuce green appearing on the
   buns); monkey_lgm has a drifted back (distance of the back's pixels to the reference's main
   colours; whether the tail is one colour); donut_unnormalized_quats is small and off-centre (its
   front must survive: front PSNR vs input >= 40 dB; its plain underside should too);
   fruit_drops_full_sh lies outside the orbit (refused, or unharmed). Their reference image is
   ``samples/monkey_front.png`` for the monkey and the input's own front view (framed, RGBA) for the
   others.
6. 4D: ``samples/blob4d`` (the blob at four times, drifted with a different seed each, frames
   corresponding index by index) through one job; the cross-time Delta E is the opacity-weighted mean
   CIE76 Delta E of each Gaussian's base colour between consecutive time steps (0 for the truth), for
   the input and for the repaired output (whose time steps are solved one by one).
7. Pictures in ``--out``: per job its contact sheet (``NAME_RUN_contact.png``, the job's own orbit);
   per object ``NAME_views.png``: rows truth | do nothing | repair (| modes) | clean repaired, columns
   the front and the held-out views, at the measures' framing; per control input | output; for 4D
   truth | input | repaired per time step.

Seconds per job are ``JobRunner.run``'s wall time after an untimed warm-up job (numba compilation).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tire.v1 import common_pb2, coordinator_pb2

from benchmarks.quality_metrics import (
    BACK_VIEWS,
    FOREGROUND_ALPHA,
    FRONT_INDEX,
    FRONT_VIEWS,
    HELD_OUT,
    SIDE_BACK_VIEWS,
    VIEWS,
    MetricFraming,
    Score,
    Views,
    base_colours,
    cross_time_delta_e,
    new_green_fraction,
    palette_distance,
    reference_palette,
    render_views,
    score,
    srgb_to_lab,
)
from benchmarks.timing import cpu_name
from samples.make_samples import BLOB_DIR, SAMPLES, blob_frames, front_reference
from services.common.errors import TireError
from services.common.gaussians import Gaussians, read_ply, write_ply
from services.common.store import MemoryStore
from services.common.tensors import png_bytes, read_png
from services.coordinator.framing_check import frame_job
from services.coordinator.jobstore import JobStore
from services.coordinator.pipeline import JobRunner
from services.coordinator.spec import MAX_RESOLUTION, MIN_RESOLUTION, resolve_spec
from services.embedded import embedded_stages
from services.testing.synthetic import OBJECTS, SHARED_ASSETS, corrupt_unseen, textured_blob

PROFILE = "cpu"
CONTROLS = {
    "hamburger": "hamburger_lgm.ply",
    "monkey": "monkey_lgm.ply",
    "donut": "donut_unnormalized_quats.ply",
    "fruit": "fruit_drops_full_sh.ply",
}
MONKEY_REFERENCE = SAMPLES / "monkey_front.png"
MODES = {
    "adaptive rings": coordinator_pb2.RingSchedule(adaptive=coordinator_pb2.AdaptiveRings()),
    "source only": coordinator_pb2.RingSchedule(source_only=coordinator_pb2.SourceOnly()),
}
"""Extra runs of ``--modes``: table label -> the job's ring schedule (its defaults); "repair" is the
default, fixed rings [20, 90, 180]."""
GOALS = {
    "clean_psnr": 40.0,  # dB, held-out fg PSNR of the clean truth repaired
    "clean_front_psnr": 45.0,  # dB, its front view
    "psnr_gain": 4.0,  # dB above doing nothing, every drifted object
    "back_ratio": 0.5,  # back Delta E of the repair over doing nothing's
    "hamburger_back_delta_e": 3.0,  # vs input
    "donut_front_psnr": 40.0,  # dB vs input
}


# ----- jobs -----------------------------------------------------------------------------------


@dataclass
class JobResult:
    """A finished job, or the sentence that refused it.

    Attributes:
        frames: the repaired asset, one ``Gaussians`` per time step (empty when refused).
        seconds: wall time of ``JobRunner.run``.
        rings: how many rings time step 0 ran.
        contact_sheet: the job's before/after contact sheet PNG (empty when refused).
        refused: why the job was refused or failed ("" when it succeeded).
    """

    frames: list[Gaussians] = field(default_factory=list)
    seconds: float = 0.0
    rings: int = 0
    contact_sheet: bytes = b""
    refused: str = ""


def default_strengths(profile: str) -> dict[str, str]:
    """The inpainter's and the refiner's default strength in ``profile``, as their Describe reports it."""
    stages = embedded_stages(MemoryStore(), profile)
    return {
        name: getattr(stages, name).Describe(common_pb2.DescribeRequest()).settings["default_strength"]
        for name in ("inpainter", "refiner")
    }


class Bench:
    """Jobs run in this process as ``tire run`` runs them: embedded stages, an in-memory store and job
    store, the profile's backends (each with its default strength)."""

    def __init__(self, profile: str = PROFILE):
        self.store = MemoryStore()
        self.jobs = JobStore(":memory:")
        self.stages = embedded_stages(self.store, profile)

    def run_job(
        self, frames: Sequence[Gaussians | bytes], references: Sequence[np.ndarray | bytes], **spec_fields
    ) -> JobResult:
        """Build the spec, resolve it, frame it (``frame_job``), run the job to its end, as SubmitJob does.

        Args:
            frames: one asset per time step: ``Gaussians`` (written as an INRIA .ply) or a .ply's bytes.
            references: one per time step: ``[H, W, 4]`` uint8 straight-alpha RGBA, or PNG bytes.
            spec_fields: any other ``JobSpec`` field (``resolution``, ``rings``, ...).

        Returns:
            The result; a spec that does not resolve, an asset that ``frame_job`` refuses, or a job that
            fails gives ``refused`` (the sentence).
        """
        plys = [f if isinstance(f, bytes) else write_ply(f) for f in frames]
        pngs = [r if isinstance(r, bytes) else png_bytes(r) for r in references]
        spec = coordinator_pb2.JobSpec(
            asset=common_pb2.AssetRef(
                frames=[self.store.put_bytes(p, suffix=".ply", media_type="application/x-ply") for p in plys]
            ),
            references=[self.store.put_bytes(p, suffix=".png", media_type="image/png") for p in pngs],
            **spec_fields,
        )
        try:
            spec = resolve_spec(spec)
            spec = frame_job(spec, self.store)  # fit the orbit to the asset, or refuse it
        except TireError as exc:
            return JobResult(refused=str(exc))
        job, _ = self.jobs.create(spec)
        start = time.perf_counter()
        job = JobRunner(self.jobs, self.stages, self.store).run(job.id)
        seconds = time.perf_counter() - start
        if job.state != coordinator_pb2.JOB_STATE_SUCCEEDED:
            return JobResult(seconds=seconds, refused=job.error or coordinator_pb2.JobState.Name(job.state))
        outputs = job.outputs
        return JobResult(
            frames=[read_ply(self.store.get_object(ref)) for ref in outputs.repaired.frames],
            seconds=seconds,
            rings=sum(1 for ring in outputs.rings if ring.time_step == 0),
            contact_sheet=self.store.get_object(outputs.contact_sheet),
        )


# ----- pictures -------------------------------------------------------------------------------


def labelled_grid(rows: Sequence[tuple[str, np.ndarray]], column_labels: Sequence[str]) -> np.ndarray:
    """Rows of tiles on white: each row ``(label, [V, H, W, 3] uint8)``, its label in a left margin, the
    column labels above; returns ``[height, width, 3]`` uint8."""
    gutter, top, margin = 4, 16, 96
    _, h, w, _ = rows[0][1].shape
    columns = max(len(images) for _, images in rows)
    sheet = np.full((top + len(rows) * (h + gutter), margin + columns * (w + gutter), 3), 255, np.uint8)
    for r, (_, images) in enumerate(rows):
        for c, image in enumerate(images):
            y, x = top + r * (h + gutter), margin + c * (w + gutter)
            sheet[y : y + h, x : x + w] = image
    picture = Image.fromarray(sheet)
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    for c, text in enumerate(column_labels):
        draw.text(
            (margin + c * (w + gutter) + w // 2, top // 2), text, fill=(0, 0, 0), font=font, anchor="mm"
        )
    for r, (text, _) in enumerate(rows):
        draw.text((4, top + r * (h + gutter) + h // 2), text, fill=(0, 0, 0), font=font, anchor="lm")
    return np.asarray(picture).copy()


def view_label(azimuth: float, elevation: float) -> str:
    return f"{azimuth:g}°" if elevation == 0 else f"{azimuth:g}°@{elevation:g}"


PICTURE_VIEWS = [FRONT_INDEX, *range(FRONT_INDEX)]
"""Column order of the pictures: the front, then the held-out views."""
PICTURE_LABELS = [view_label(*VIEWS[i]) for i in PICTURE_VIEWS]


def save_png(folder: Path, name: str, image: np.ndarray | bytes) -> None:
    (folder / name).write_bytes(image if isinstance(image, bytes) else png_bytes(image))


# ----- the runs -------------------------------------------------------------------------------


@dataclass
class ObjectRuns:
    """One ground-truth object: its scores per run (None where the job was refused) and job times."""

    name: str
    scores: dict[str, Score | None] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    rings: dict[str, int] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)


def run_object(bench: Bench, k: int, name: str, args: argparse.Namespace) -> ObjectRuns:
    side = args.resolution
    truth = OBJECTS[name](args.gaussians, seed=0)
    drifted = corrupt_unseen(truth, seed=k)
    reference = front_reference(truth, side)
    framing = MetricFraming.fit(truth)
    truth_views = render_views(truth, framing, side)
    runs = ObjectRuns(name)
    drifted_views = render_views(drifted, framing, side)
    runs.scores["do nothing"] = score(drifted_views, truth_views)
    pictures = [("truth", truth_views.uint8()), ("do nothing", drifted_views.uint8())]
    jobs = {"repair": (drifted, {})}
    if args.modes:
        jobs.update({label: (drifted, {"rings": rings}) for label, rings in MODES.items()})
    jobs["clean"] = (truth, {})
    for run, (asset, fields) in jobs.items():
        result = bench.run_job([asset], [reference], resolution=side, **fields)
        runs.seconds[run], runs.rings[run] = result.seconds, result.rings
        if result.refused:
            runs.scores[run], runs.refused[run] = None, result.refused
            continue
        views = render_views(result.frames[0], framing, side)
        runs.scores[run] = score(views, truth_views)
        pictures.append((run if run != "clean" else "clean repaired", views.uint8()))
        save_png(args.out, f"{name}_{run.replace(' ', '_')}_contact.png", result.contact_sheet)
    grid = labelled_grid([(label, images[PICTURE_VIEWS]) for label, images in pictures], PICTURE_LABELS)
    save_png(args.out, f"{name}_views.png", grid)
    return runs


@dataclass
class ControlRun:
    """One real asset: scores of the output against the input, and the control's own measures."""

    name: str
    refused: str = ""
    score: Score | None = None
    seconds: float = 0.0
    measures: list[tuple[str, str, str, str]] = field(default_factory=list)  # (measure, input, output, goal)


def monkey_tail(means: np.ndarray) -> np.ndarray:
    """``[N]`` bool: the Gaussians of monkey_lgm's tail (a box found by eye on renders: below the ears,
    the loop behind the body toward +x and the tip poking out at +x)."""
    x, y, z = means.T
    return (y < 0.0) & (y > -0.5) & ((x > 0.22) | ((z < -0.28) & (x > -0.1)))


def tail_delta_e(gaussians: Gaussians) -> float:
    """Mean Delta E (opacity-weighted) of the monkey tail's Gaussians behind the body (z < -0.1) to the
    median CIELab colour of its Gaussians in front (z > 0, the part the reference shows)."""
    tail = monkey_tail(gaussians.means)
    lab = srgb_to_lab(base_colours(gaussians).astype(np.float32))
    opacity = gaussians.opacities.astype(np.float64)
    front = tail & (gaussians.means[:, 2] > 0.0) & (opacity >= 0.5)
    back = tail & (gaussians.means[:, 2] < -0.1)
    colour = np.median(lab[front], axis=0)
    distance = np.linalg.norm(lab[back] - colour, axis=1)
    return float((distance * opacity[back]).sum() / opacity[back].sum())


def run_control(bench: Bench, name: str, args: argparse.Namespace) -> ControlRun:
    side = args.resolution
    path = args.assets / CONTROLS[name]
    data = path.read_bytes()
    asset = read_ply(data)
    framing = MetricFraming.fit(asset)
    if name == "monkey":
        reference: np.ndarray | bytes = MONKEY_REFERENCE.read_bytes()
    else:
        reference = front_reference(framing.apply(asset), side)
    run = ControlRun(name)
    result = bench.run_job([data], [reference], resolution=side)
    run.seconds = result.seconds
    if result.refused:
        run.refused = result.refused
        return run
    output = result.frames[0]
    input_views = render_views(asset, framing, side)
    output_views = render_views(output, framing, side)
    run.score = score(output_views, input_views)
    save_png(args.out, f"{name}_contact.png", result.contact_sheet)
    rows = [("input", input_views.uint8()[PICTURE_VIEWS]), ("output", output_views.uint8()[PICTURE_VIEWS])]
    save_png(args.out, f"{name}_views.png", labelled_grid(rows, PICTURE_LABELS))

    if name == "hamburger":
        green = new_green_fraction(output_views, input_views, SIDE_BACK_VIEWS)
        run.measures.append(
            ("new green in the bun thirds, side/back views", "0%", f"{100 * green:.2f}%", "—")
        )
        run.measures.append(
            (
                "back ΔE vs input",
                "0",
                f"{run.score.back_delta_e:.2f}",
                f"< {GOALS['hamburger_back_delta_e']:g}",
            )
        )
    elif name == "monkey":
        palette = reference_palette(read_png(MONKEY_REFERENCE.read_bytes(), mode="RGBA"))

        def palette_delta_e(views: Views, indices: Sequence[int]) -> float:
            foreground = input_views.alpha[list(indices)] >= FOREGROUND_ALPHA
            return float(palette_distance(views.lab[list(indices)][foreground], palette).mean())

        floor = palette_delta_e(input_views, FRONT_VIEWS)
        run.measures.append(
            (
                f"back pixels' ΔE to the reference's main colours (the input's front: {floor:.2f})",
                f"{palette_delta_e(input_views, BACK_VIEWS):.2f}",
                f"{palette_delta_e(output_views, BACK_VIEWS):.2f}",
                "lower",
            )
        )
        run.measures.append(
            (
                "tail behind: ΔE to the tail's front colour",
                f"{tail_delta_e(asset):.2f}",
                f"{tail_delta_e(output):.2f}",
                "lower",
            )
        )
    elif name == "donut":
        run.measures.append(
            (
                "front view fg PSNR vs input (dB)",
                "99",
                f"{run.score.front_psnr:.2f}",
                f">= {GOALS['donut_front_psnr']:g}",
            )
        )
        run.measures.append(
            (
                "back ΔE vs input (its underside is plain dough, not drift: a change is harm)",
                "0",
                f"{run.score.back_delta_e:.2f}",
                "—",
            )
        )
    return run


@dataclass
class TimeRun:
    """The 4D sample: measures of the input and of the output."""

    refused: str = ""
    seconds: float = 0.0
    cross_all: tuple[float, float] = (0.0, 0.0)
    cross_drifted: tuple[float, float] = (0.0, 0.0)
    scores: tuple[list[Score], list[Score]] = field(default_factory=lambda: ([], []))


def run_4d(bench: Bench, args: argparse.Namespace) -> TimeRun:
    side = args.resolution
    folder = SAMPLES / BLOB_DIR
    plys = [p.read_bytes() for p in sorted(folder.glob("frame_*.ply"))]
    pngs = [p.read_bytes() for p in sorted(folder.glob("reference_*.png"))]
    inputs = [read_ply(p) for p in plys]
    truths, _ = blob_frames()
    run = TimeRun()
    result = bench.run_job(plys, pngs, resolution=side)
    run.seconds = result.seconds
    if result.refused:
        run.refused = result.refused
        return run
    outputs = result.frames
    weights = inputs[0].opacities.astype(np.float64)
    drifted = np.zeros(len(weights), dtype=bool)
    for frame, truth in zip(inputs, truths, strict=True):
        drifted |= np.abs(base_colours(frame) - base_colours(truth)).max(axis=1) > 1.0 / 255.0
    every = np.ones_like(drifted)
    if any(len(o) != len(weights) for o in outputs):
        run.refused = "the output's time steps do not hold the input's Gaussians index by index"
        return run
    run.cross_all = (cross_time_delta_e(inputs, weights, every), cross_time_delta_e(outputs, weights, every))
    run.cross_drifted = (
        cross_time_delta_e(inputs, weights, drifted),
        cross_time_delta_e(outputs, weights, drifted),
    )
    framing = MetricFraming.fit(truths[0])
    rows = []
    for t, (truth, frame, output) in enumerate(zip(truths, inputs, outputs, strict=True)):
        truth_views = render_views(truth, framing, side)
        input_views, output_views = render_views(frame, framing, side), render_views(output, framing, side)
        run.scores[0].append(score(input_views, truth_views))
        run.scores[1].append(score(output_views, truth_views))
        rows += [
            (f"t{t} truth", truth_views.uint8()[PICTURE_VIEWS]),
            (f"t{t} input", input_views.uint8()[PICTURE_VIEWS]),
            (f"t{t} repaired", output_views.uint8()[PICTURE_VIEWS]),
        ]
    save_png(args.out, "blob4d_views.png", labelled_grid(rows, PICTURE_LABELS))
    save_png(args.out, "blob4d_contact.png", result.contact_sheet)
    return run


# ----- the tables -----------------------------------------------------------------------------


def score_cells(s: Score | None) -> str:
    if s is None:
        return " | | | "
    return f"{s.psnr:.2f} | {s.back_delta_e:.2f} | {s.front_delta_e:.2f} | {s.front_psnr:.2f}"


def print_objects(objects: list[ObjectRuns]) -> None:
    print("| object | run | held-out fg PSNR (dB) | back ΔE | front ΔE | front PSNR (dB) | rings | s/job |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    runs = list(objects[0].scores)
    for o in objects:
        for run in runs:
            seconds = f"{o.seconds[run]:.1f}" if run in o.seconds else ""
            rings = str(o.rings[run]) if run in o.rings else ""
            cells = score_cells(o.scores[run])
            note = " (refused, below)" if run in o.refused else ""
            label = "clean truth repaired" if run == "clean" else run
            print(f"| {o.name} | {label}{note} | {cells} | {rings} | {seconds} |")
    if len(objects) > 1:
        for run in runs:
            scored = [o.scores[run] for o in objects if o.scores[run] is not None]
            if not scored:
                continue
            mean = Score(
                *(float(np.mean([getattr(s, f) for s in scored])) for f in Score.__dataclass_fields__)
            )
            seconds = [o.seconds[run] for o in objects if run in o.seconds]
            label = "clean truth repaired" if run == "clean" else run
            time_cell = f"{np.mean(seconds):.1f}" if seconds else ""
            counts = sorted({o.rings[run] for o in objects if run in o.rings})
            rings = "" if not counts else f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
            print(f"| mean of {len(scored)} | {label} | {score_cells(mean)} | {rings} | {time_cell} |")
    for o in objects:
        for run, sentence in o.refused.items():
            print(f"\n{o.name}, {run}: refused: {sentence}")


def print_controls(controls: list[ControlRun]) -> None:
    print(
        "| asset | result | held-out fg PSNR vs input (dB) | back ΔE vs input | front ΔE vs input | "
        "front PSNR vs input (dB) | s/job |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for c in controls:
        result = "refused (below)" if c.refused else "repaired"
        print(f"| {c.name} | {result} | {score_cells(c.score)} | {c.seconds:.1f} |")
    for c in controls:
        if c.refused:
            print(f"\n{c.name} refused: {c.refused}")
    measures = [(c.name, m) for c in controls for m in c.measures]
    if measures:
        print("\n| asset | measure | input | output | goal |")
        print("|---|---|---:|---:|---|")
        for name, (measure, before, after, goal) in measures:
            print(f"| {name} | {measure} | {before} | {after} | {goal} |")


def print_4d(run: TimeRun) -> None:
    if run.refused:
        print(f"blob4d: refused: {run.refused}")
        return
    rows = [
        ("cross-time ΔE, all Gaussians", *run.cross_all, "output <= input"),
        ("cross-time ΔE, drifted Gaussians", *run.cross_drifted, "output <= input"),
    ]
    for label, attribute in (
        ("held-out fg PSNR vs truth (dB), mean over t", "psnr"),
        ("back ΔE vs truth, mean over t", "back_delta_e"),
        ("front ΔE vs truth, mean over t", "front_delta_e"),
        ("front PSNR vs truth (dB), mean over t", "front_psnr"),
    ):
        before, after = (float(np.mean([getattr(s, attribute) for s in scores])) for scores in run.scores)
        rows.append((label, before, after, ""))
    print("| samples/blob4d (4 time steps) | input (drifted) | output (repaired) | goal |")
    print("|---|---:|---:|---|")
    for label, before, after, goal in rows:
        print(f"| {label} | {before:.2f} | {after:.2f} | {goal} |")
    print(f"\nJob: {run.seconds:.1f} s for 4 time steps.")


def print_summary(objects: list[ObjectRuns], controls: list[ControlRun], time_run: TimeRun | None) -> None:
    rows: list[tuple[str, str, str, str]] = []  # (goal, measure, figure, met)

    def add(goal: str, measure: str, figure: str, ok: bool) -> None:
        rows.append((goal, measure, figure, "yes" if ok else "**no**"))

    def worst(run: str, key) -> tuple[float, str] | None:
        """The smallest ``key(scores of run, scores of doing nothing)`` over objects, and its object."""
        values = [(key(o.scores[run], o.scores["do nothing"]), o.name) for o in objects if o.scores.get(run)]
        return min(values) if values else None

    if found := worst("clean", lambda clean, _: clean.psnr):
        add(
            "clean truth repaired: held-out fg PSNR >= 40 dB",
            "lowest object",
            f"{found[0]:.2f} ({found[1]})",
            found[0] >= GOALS["clean_psnr"],
        )
    if found := worst("clean", lambda clean, _: clean.front_psnr):
        add(
            "clean truth repaired: front PSNR >= 45 dB",
            "lowest object",
            f"{found[0]:.2f} ({found[1]})",
            found[0] >= GOALS["clean_front_psnr"],
        )
    if found := worst("repair", lambda repair, nothing: repair.psnr - nothing.psnr):
        add(
            "drifted: held-out fg PSNR >= 4 dB above doing nothing, every object",
            "smallest gain (dB)",
            f"{found[0]:+.2f} ({found[1]})",
            found[0] >= GOALS["psnr_gain"],
        )
    if found := worst("repair", lambda repair, nothing: -repair.back_delta_e / nothing.back_delta_e):
        add(
            "drifted: back ΔE halved",
            "largest ratio repair / do nothing",
            f"{-found[0]:.2f} ({found[1]})",
            -found[0] <= GOALS["back_ratio"],
        )
    if found := worst("repair", lambda repair, nothing: repair.front_psnr - nothing.front_psnr):
        add(
            "drifted: the front no worse than the input",
            "front PSNR, repair − do nothing (dB)",
            f"{found[0]:+.2f} ({found[1]})",
            found[0] >= 0.0,
        )
    if found := worst("repair", lambda repair, nothing: nothing.front_delta_e - repair.front_delta_e):
        add(
            "drifted: the front no worse than the input",
            "front ΔE, do nothing − repair",
            f"{found[0]:+.2f} ({found[1]})",
            found[0] >= 0.0,
        )
    for c in controls:
        if c.name == "hamburger":
            ok = not c.refused and c.score.back_delta_e < GOALS["hamburger_back_delta_e"]
            figure = "refused" if c.refused else f"{c.score.back_delta_e:.2f}"
            add("hamburger (needs no repair): back ΔE vs input < 3", "", figure, ok)
        elif c.name == "donut":
            ok = not c.refused and c.score.front_psnr >= GOALS["donut_front_psnr"]
            figure = "refused" if c.refused else f"{c.score.front_psnr:.2f}"
            add("donut: front PSNR vs input >= 40 dB", "", figure, ok)
        elif c.name == "fruit" and c.refused:
            add("fruit (outside the orbit): refused, or unharmed", "", "refused", True)
        elif c.name == "fruit":
            ok = c.score.psnr >= GOALS["clean_psnr"] and c.score.front_psnr >= GOALS["clean_front_psnr"]
            figure = f"ran: {c.score.psnr:.2f} / {c.score.front_psnr:.2f}, {'unharmed' if ok else 'harmed'}"
            add(
                "fruit (outside the orbit): refused, or unharmed",
                "held-out / front PSNR vs input (dB)",
                figure,
                ok,
            )
    if time_run is not None and not time_run.refused:
        before, after = time_run.cross_all
        add(
            "4D: cross-time ΔE, output <= input",
            "all Gaussians: output vs input",
            f"{after:.2f} vs {before:.2f}",
            after <= before,
        )
    print("| goal | measure | figure | met |")
    print("|---|---|---|---|")
    for goal, measure, figure, ok in rows:
        print(f"| {goal} | {measure} | {figure} | {ok} |")


# ----- main -----------------------------------------------------------------------------------


def names(value: str, choices: Sequence[str], what: str) -> list[str]:
    if value == "none":
        return []
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in choices]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {unknown}; choose from {', '.join(choices)} or none"
        )
    return chosen


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", default=",".join(OBJECTS), help="ground-truth objects, comma-separated")
    parser.add_argument(
        "--controls", default=",".join(CONTROLS), help="real assets, comma-separated, or none"
    )
    parser.add_argument("--no-4d", action="store_true", help="skip the 4D sample")
    parser.add_argument("--modes", action="store_true", help="also adaptive and source-only rings")
    parser.add_argument("--resolution", type=int, default=256, help="job and metric view size, pixels")
    parser.add_argument("--gaussians", type=int, default=12_000, help="Gaussians per object")
    parser.add_argument("--assets", type=Path, default=SHARED_ASSETS, help="folder of the control .ply files")
    parser.add_argument("--out", type=Path, default=Path("out/bench/quality"), help="pictures go here")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 64x64, 3000 Gaussians, blob and head"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.resolution, args.gaussians, args.objects = 64, 3_000, "blob,head"
    try:
        objects = names(args.objects, list(OBJECTS), "objects")
        controls = names(args.controls, list(CONTROLS), "controls")
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if not (MIN_RESOLUTION <= args.resolution <= MAX_RESOLUTION and args.resolution % 8 == 0):
        parser.error(
            f"--resolution must be a multiple of 8 from {MIN_RESOLUTION} to {MAX_RESOLUTION}, "
            f"got {args.resolution}"
        )
    if args.gaussians < 100:
        parser.error(f"--gaussians must be at least 100, got {args.gaussians}")
    missing = [n for n in controls if not (args.assets / CONTROLS[n]).is_file()]
    if missing:
        print(
            f"(no {', '.join(CONTROLS[n] for n in missing)} under {args.assets}: those controls are skipped)"
        )
        controls = [n for n in controls if n not in missing]
    args.out.mkdir(parents=True, exist_ok=True)

    side = args.resolution
    print(f"Quality against ground truth: {len(objects)} object(s), {side}x{side}")
    strengths = default_strengths(PROFILE)
    print(
        f"jobs: embedded, {PROFILE} profile (strength {strengths['inpainter']}, refine strength "
        f"{strengths['refiner']}: the backends' defaults), fixed rings [20, 90, 180], orbit step 20, seed 0, "
        "framed by frame_job"
    )
    print(
        f"objects: {', '.join(objects) or 'none'} ({args.gaussians:,} Gaussians, seed 0); "
        "drift: corrupt_unseen(seed=k)"
    )
    print(
        f"held-out views: {', '.join(view_label(*v) for v in HELD_OUT)}; back: "
        f"{', '.join(view_label(*VIEWS[i]) for i in BACK_VIEWS)}; front: "
        f"{', '.join(view_label(*VIEWS[i]) for i in FRONT_VIEWS)}"
    )
    print(
        f"foreground: reference alpha >= {FOREGROUND_ALPHA:g}, renders on white at a framing that fills "
        "the view; ΔE: CIE76 per pixel, mean over foreground pixels"
    )
    print(f"machine: {cpu_name()}, {numba.config.NUMBA_NUM_THREADS} threads; pictures in {args.out}/\n")

    bench = Bench(PROFILE)
    # Warm-up (untimed): numba compiles or loads every kernel the stages and the renders use.
    warm = textured_blob(1_000, seed=99)
    bench.run_job([corrupt_unseen(warm)], [front_reference(warm, 64)], resolution=64)
    render_views(warm, MetricFraming.fit(warm), 64)

    start = time.perf_counter()
    object_runs = [run_object(bench, k, name, args) for k, name in enumerate(objects)]
    if object_runs:
        print("## Ground truth: each run against the truth\n")
        print_objects(object_runs)
    control_runs = [run_control(bench, name, args) for name in controls]
    if control_runs:
        print("\n## Controls: real generator outputs, each output against its input\n")
        print_controls(control_runs)
    time_run = None if args.no_4d else run_4d(bench, args)
    if time_run is not None:
        print("\n## 4D: samples/blob4d\n")
        print_4d(time_run)
    print("\n## Summary: the goals\n")
    print_summary(object_runs, control_runs, time_run)
    print(f"\nTotal {time.perf_counter() - start:.0f} s (warm-up excluded).")


if __name__ == "__main__":
    main()

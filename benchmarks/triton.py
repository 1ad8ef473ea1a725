"""The sd-lora inpainter in this process against the same weights served by a local tritonserver:
what a call through Triton costs on top of the work, and what Triton's dynamic batching buys.

    python -m benchmarks.triton [--calls 20] [--per-caller 4] [--repeats 3] [--fit-repeats 3] [--quick]

Needs ``make triton`` (a real tritonserver, CPU, Python backend). The model is the tiny random-weight
Stable Diffusion inpainting model of the real architecture (``services.testing.random_models``; the
``sd2`` preset, 1.3 B parameters, is left to a GPU); it works at its native 64 x 64, while the views on
the wire are job size. Three ways to call it, all built from one weights folder:

- in process: ``SdLoraBackend``, one call at a time (``one_call_at_a_time``), as the inpainter service
  runs it without Triton;
- Triton, batched: ``TritonInpaintBackend(url, "1")`` (pinned, as a job's calls are) to a tritonserver on
  a repository written by ``write_version(..., MODELS, 1, version_settings(weights))``: ``inpaint`` with
  dynamic batching (``BATCH_DELAY_US``, up to ``MAX_BATCH_REQUESTS`` requests per execute);
- Triton, unbatched: a second tritonserver on a second repository whose ``inpaint`` is
  ``dataclasses.replace(INPAINT, dynamic_batching=False)``: each request executes alone.

The inpaint call is what a ring sends for one target (``services.coordinator.pipeline``): one 256 x 256
view of the bundled LGM monkey from the job's orbit (every 20 degrees), its mask the foreground the
front view does not observe (the geometric tracker), its alpha, the subject, strength 0.3 (sd-lora's
default) of a 50-step schedule (15 steps run), guidance 7.5. The subject is fitted in process.

1. Per-call overhead: the same call ``--calls`` times each way after two warm-up calls, the three ways
   taking turns (so drift on a shared machine hits them alike); median and 90th percentile. A second
   row sends the same view with an empty mask: nothing to denoise, so its time is the call's own cost;
   a third does so with a subject the size of a real SD2 adapter of rank 16 (13.3 MB; random bytes,
   which an empty mask never reads): its bytes travel with the first request only, the others name it
   by sha256 (``TritonInpaintBackend``).
   ``fit_subject`` (a few LoRA steps, streamed from Triton step by step) is timed both ways too.
2. Throughput: 1, 2 and 4 threads (a ring's targets, or several jobs) each send ``--per-caller``
   inpaint calls back to back; calls per second over the wall time, the median of ``--repeats`` runs
   per way, the ways taking turns. Callers of one job share a
   subject; the last row gives each caller its own (different jobs), whose calls Triton still hands one
   execute together but which cannot share UNet batches (``SdLoraBackend.inpaint_together`` groups by
   subject). The batch sizes Triton executed are read from its statistics (``batch_stats``) before and
   after each row.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.neural import job_views
from benchmarks.timing import cpu_name
from services.common.model_repository import write_version
from services.common.triton import LocalTriton
from services.inpainter.contract import FitConfig
from services.inpainter.sd_lora import UNET_TARGETS, SdLoraBackend
from services.inpainter.triton_backend import TritonInpaintBackend
from services.inpainter.triton_model import BATCH_DELAY_US, FIT, INPAINT, MODELS, version_settings
from services.testing.random_models import UNET, save_sd_inpainting

RESOLUTION = 256
"""The job's view size (the coordinator's default)."""
ORBIT_STEP = 20.0
STRENGTH = 0.3  # sd-lora's default_strength: 15 of the 50 steps run
SUBJECTS = 4
"""Subjects fitted for the different-jobs row; the first one is every other row's. Within the
backend's adapter cache (4), so no row reloads an adapter."""
CALLERS = (1, 2, 4)
FIT_STEPS = 5


@dataclasses.dataclass(frozen=True)
class Call:
    """One ring target's inpaint request: ``images [1, H, W, 3]`` uint8, ``masks [1, H, W]`` bool,
    ``alpha [1, H, W]`` float32."""

    images: np.ndarray
    masks: np.ndarray
    alpha: np.ndarray


def ring_calls() -> list[Call]:
    """One call per view of the monkey's orbit but the front: its unobserved foreground masked."""
    views, masks = job_views(RESOLUTION, ORBIT_STEP)
    return [
        Call(views.rgb[v : v + 1], masks[v : v + 1], views.alpha[v : v + 1])
        for v in range(1, len(views.rgb))
        if masks[v].any()
    ]


def inpaint(backend, call: Call, subject: bytes, seed: int = 0) -> np.ndarray:
    return backend.inpaint(call.images, call.masks, call.alpha, subject, STRENGTH, seed)


def sd2_adapter_bytes(rank: int = 16) -> int:
    """The size of a subject adapter of the real SD2 inpainting UNet (float32 LoRA weights of ``rank`` on
    ``UNET_TARGETS``, as ``fit_subject`` saves them, without metadata), counted on the meta device."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig, get_peft_model_state_dict

    with torch.device("meta"):
        unet = UNet2DConditionModel(in_channels=9, **UNET["sd2"])
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(UNET_TARGETS)))
    return sum(tensor.numel() * 4 for tensor in get_peft_model_state_dict(unet).values())


def percentile_ms(times: list[float], q: float) -> float:
    return 1000.0 * float(np.percentile(times, q))


def side_by_side(calls: dict[str, Callable[[], object]], repeats: int, warm_up: int = 2) -> dict:
    """Seconds of each call, the calls taking turns: ``repeats`` rounds after ``warm_up`` rounds."""
    for _ in range(warm_up):
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times


def batch_counts(server: LocalTriton) -> dict[int, int]:
    """Executions of ``inpaint`` so far, by batch size (requests per execute), from Triton's statistics."""
    import tritonclient.grpc as triton_grpc

    with triton_grpc.InferenceServerClient(server.url) as client:
        stats = client.get_inference_statistics(INPAINT.name, "1", as_json=True)
    counts: dict[int, int] = {}
    for model in stats.get("model_stats", []):
        for batch in model.get("batch_stats", []):
            counts[int(batch["batch_size"])] = int(batch["compute_infer"].get("count", 0))
    return counts


def throughput(backend, calls: list[Call], subjects: list[bytes], per_caller: int) -> float:
    """Calls per second: ``len(subjects)`` threads, thread c sending ``per_caller`` calls with subject c."""
    barrier = threading.Barrier(len(subjects) + 1)
    errors: list[BaseException] = []

    def caller(c: int) -> None:
        barrier.wait()
        try:
            for j in range(per_caller):
                call = calls[(c * per_caller + j) % len(calls)]  # the ring's targets, in turn
                inpaint(backend, call, subjects[c], seed=j)
        except BaseException as exc:  # reported after the join
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(c,)) for c in range(len(subjects))]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return len(subjects) * per_caller / elapsed


def histogram(before: dict[int, int], after: dict[int, int]) -> str:
    """``size x executions`` of the executions between two ``batch_counts``."""
    delta = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    return ", ".join(f"{size}x{count}" for size, count in sorted(delta.items()) if count) or "none"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20, help="timed calls per way (per-call overhead)")
    parser.add_argument("--per-caller", type=int, default=4, help="inpaint calls per caller (throughput)")
    parser.add_argument("--repeats", type=int, default=3, help="throughput runs per row and way")
    parser.add_argument("--fit-repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="few calls (smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.calls, args.per_caller, args.fit_repeats, args.repeats = 3, 2, 1, 1

    load = os.getloadavg()
    print(
        f"machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads (Triton's Python-backend stub: torch's default, the same); "
        f"load average {load[0]:.2f} at start"
    )
    calls = ring_calls()
    call = calls[len(calls) // 2]  # the view behind the front
    empty = dataclasses.replace(call, masks=np.zeros_like(call.masks))
    print(
        f"inpaint call: one {RESOLUTION}x{RESOLUTION} view ({call.masks.mean():.0%} of it masked), "
        f"strength {STRENGTH} of 50 steps, guidance 7.5"
    )

    with tempfile.TemporaryDirectory() as folder:
        weights = str(save_sd_inpainting(Path(folder, "tiny-inpaint"), "tiny"))
        local = SdLoraBackend(weights, device="cpu")
        side = local.resolution
        print(f"model: the tiny random-weight SD inpainting model, at its native {side}x{side}\n")
        subjects = [  # one per job: each fitted on its own view, with its own seed
            local.fit_subject(c.images, c.alpha, FitConfig(steps=FIT_STEPS, seed=s), lambda *_: None)
            for s, c in enumerate(calls[:SUBJECTS])
        ]
        subject = subjects[0]
        batched_repository, unbatched_repository = Path(folder, "batched"), Path(folder, "unbatched")
        write_version(batched_repository, MODELS, 1, version_settings(weights))
        write_version(
            unbatched_repository,
            (dataclasses.replace(INPAINT, dynamic_batching=False), FIT),
            1,
            version_settings(weights),
        )
        with LocalTriton(batched_repository) as batched, LocalTriton(unbatched_repository) as unbatched:
            started = time.perf_counter()
            batched.load(INPAINT.name)
            batched.load(FIT.name)
            unbatched.load(INPAINT.name)
            print(f"Triton: models loaded in {time.perf_counter() - started:.1f} s (not timed below)")
            ways = {
                "in process": local,
                "Triton, batched": TritonInpaintBackend(batched.url, "1"),
                "Triton, unbatched": TritonInpaintBackend(unbatched.url, "1"),
            }
            served = inpaint(ways["Triton, batched"], call, subject)
            if not np.array_equal(served, inpaint(local, call, subject)):
                raise RuntimeError("Triton's inpainting differs from the backend's in this process")

            # 1. Per-call overhead.
            rows = {}
            # An SD2-size adapter's bytes: unread with an empty mask; sent once, then named by sha256.
            sd2_subject = np.random.default_rng(0).bytes(sd2_adapter_bytes())
            for label, the_call, the_subject in (
                (f"inpaint, strength {STRENGTH}", call, subject),
                (f"inpaint, empty mask ({len(subject) / 1e6:.2f} MB subject)", empty, subject),
                (
                    f"inpaint, empty mask ({len(sd2_subject) / 1e6:.1f} MB SD2-size subject)",
                    empty,
                    sd2_subject,
                ),
            ):
                rows[label] = side_by_side(
                    {way: lambda b=b, c=the_call, s=the_subject: inpaint(b, c, s) for way, b in ways.items()},
                    args.calls,
                )
            config = FitConfig(steps=FIT_STEPS, seed=9)
            reference = call.images, np.ones(call.images.shape[:3], np.float32)
            rows[f"fit_subject, {FIT_STEPS} LoRA steps"] = side_by_side(
                {
                    way: lambda b=b: b.fit_subject(*reference, config, lambda *_: None)
                    for way, b in list(ways.items())[:2]
                },
                args.fit_repeats,
                warm_up=1,
            )
            delay_ms = BATCH_DELAY_US / 1000
            print(
                f"\nPer call, ms: median (p90) of {args.calls} calls ({args.fit_repeats} fits) after warm-up,"
                f" "
                f"the ways taking turns; batched Triton waits up to {delay_ms:.0f} ms for a batch to fill"
            )
            print(
                "| call | in process | Triton, batched | Triton, unbatched "
                "| overhead, batched | overhead, unbatched | ratio batched/in process |"
            )
            print("|---|---:|---:|---:|---:|---:|---:|")
            for label, times in rows.items():
                median = {way: percentile_ms(t, 50) for way, t in times.items()}
                cells = [
                    f"{median[way]:,.1f} ({percentile_ms(times[way], 90):,.1f})" if way in times else "—"
                    for way in ways
                ]
                overheads = [
                    f"{median[way] - median['in process']:+,.1f}" if way in times else "—"
                    for way in list(ways)[1:]
                ]
                ratio = median["Triton, batched"] / median["in process"]
                print(f"| {label} | {' | '.join(cells + overheads)} | {ratio:.2f} |")

            # 2. Throughput.
            print(
                f"\nThroughput, calls/s (median of {args.repeats} runs, the ways taking turns): each caller "
                f"sends {args.per_caller} inpaint calls back to back; batches: Triton's executions over the "
                "runs, requests per execute x executions"
            )
            print(
                "| callers | in process | Triton, unbatched | Triton, batched | batching speed-up "
                "| batched / in process | batches executed (batched) | (unbatched) |"
            )
            print("|---|---:|---:|---:|---:|---:|---|---|")
            servers = {"Triton, batched": batched, "Triton, unbatched": unbatched}
            cases = [(f"{n}, one job", [subject] * n) for n in CALLERS]
            cases.append((f"{SUBJECTS}, {SUBJECTS} jobs", subjects))
            for _, case_subjects in cases[-1:]:  # warm-up: every subject's adapter loaded everywhere
                for way in ways.values():
                    for s in case_subjects:
                        inpaint(way, call, s)
            for label, case_subjects in cases:
                rates: dict[str, list[float]] = {way: [] for way in ways}
                before = {way: batch_counts(server) for way, server in servers.items()}
                for _ in range(args.repeats):  # the ways taking turns
                    for way, backend in ways.items():
                        rates[way].append(throughput(backend, calls, case_subjects, args.per_caller))
                batches = {
                    way: histogram(before[way], batch_counts(server)) for way, server in servers.items()
                }
                rate = {way: statistics.median(r) for way, r in rates.items()}
                print(
                    f"| {label} | {rate['in process']:.2f} | {rate['Triton, unbatched']:.2f} "
                    f"| {rate['Triton, batched']:.2f} "
                    f"| {rate['Triton, batched'] / rate['Triton, unbatched']:.2f}x "
                    f"| {rate['Triton, batched'] / rate['in process']:.2f}x "
                    f"| {batches['Triton, batched']} | {batches['Triton, unbatched']} |"
                )
    print(
        f"\nThe {SUBJECTS}-jobs row: Triton hands their calls to one execute, but calls with different "
        "subjects do not share UNet batches: each subject's views are denoised apart."
    )
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} at the end (1 min; {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()

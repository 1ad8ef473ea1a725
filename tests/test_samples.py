"""The bundled samples are what ``samples.make_samples`` makes today, so nothing shipped is stale."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from samples import make_samples
from services.common.gaussians import read_ply, read_ply_sequence
from services.common.tensors import read_png

SAMPLES = make_samples.SAMPLES
BLOB = SAMPLES / make_samples.BLOB_DIR
STEPS = len(make_samples.BLOB_TIMES)


def _assert_same_reference(shipped: np.ndarray, fresh: np.ndarray) -> None:
    """Equal within 1 level of alpha, and 2 levels of colour where the colour means something.

    Renders are deterministic on one machine; the slack covers other CPUs' floating point. Colour is
    compared where alpha >= 16/255: below, dividing by alpha magnifies any difference.
    """
    assert shipped.shape == fresh.shape and shipped.dtype == fresh.dtype == np.uint8
    diff = np.abs(shipped.astype(np.int16) - fresh.astype(np.int16))
    assert diff[..., 3].max() <= 1
    visible = fresh[..., 3] >= 16
    assert diff[..., :3][visible].max() <= 2


def test_monkey_reference_is_a_fresh_front_render() -> None:
    shipped = read_png((SAMPLES / make_samples.MONKEY_REFERENCE).read_bytes())
    assert shipped.shape == (512, 512, 4), "the reference is RGBA, 512 x 512"
    monkey = read_ply(SAMPLES / make_samples.MONKEY)
    _assert_same_reference(shipped, make_samples.front_reference(monkey, make_samples.MONKEY_RESOLUTION))
    alpha = shipped[..., 3]
    assert alpha[0].max() == 0 and alpha[256, 256] == 255, "black, empty border; opaque centre"


@pytest.fixture(scope="module")
def blob_frames():
    return make_samples.blob_frames()


def test_blob4d_frames_are_the_drifted_blob_in_motion(blob_frames) -> None:
    truth, drifted = blob_frames
    frames = read_ply_sequence([BLOB / f"frame_{step:02d}.ply" for step in range(STEPS)])
    assert len({len(frame) for frame in frames}) == 1 and len(frames[0]) == make_samples.BLOB_GAUSSIANS
    for step, (frame, fresh) in enumerate(zip(frames, drifted, strict=True)):
        assert frame.sh_degree == 0 and not frame.extra, f"time step {step} is not in the LGM layout"
        np.testing.assert_allclose(frame.means, fresh.means, atol=1e-5, err_msg=f"time step {step}")
        np.testing.assert_allclose(frame.sh, fresh.sh, atol=1e-4, err_msg=f"time step {step}")
    # The object moves from step to step, and index i is the same Gaussian at every step.
    shifts = [np.linalg.norm(b.means - a.means, axis=1) for a, b in itertools.pairwise(frames)]
    assert all(0.005 < shift.mean() < 0.1 for shift in shifts)
    # The drift: the truth and the shipped frame differ behind, not in front.
    back = truth[0].means[:, 2] < -0.2
    assert not np.allclose(frames[0].sh[back], truth[0].sh[back], atol=0.1)
    front = truth[0].means[:, 2] > 0.2
    np.testing.assert_array_equal(frames[0].sh[front], truth[0].sh[front])


def test_blob4d_references_are_fresh_renders_of_the_truth(blob_frames) -> None:
    truth, _ = blob_frames
    for step, frame in enumerate(truth):
        shipped = read_png((BLOB / f"reference_{step:02d}.png").read_bytes())
        side = make_samples.BLOB_RESOLUTION
        assert shipped.shape == (side, side, 4)
        _assert_same_reference(shipped, make_samples.front_reference(frame, side))


def test_blob4d_stays_small() -> None:
    files = sorted(BLOB.iterdir())
    assert [f.name for f in files] == [f"frame_{s:02d}.ply" for s in range(STEPS)] + [
        f"reference_{s:02d}.png" for s in range(STEPS)
    ]
    assert sum(f.stat().st_size for f in files) < 5_000_000

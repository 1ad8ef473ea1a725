"""A whole job with the diffusion backends (sd-lora inpainter, mv-diffusion refiner) on tiny random-weight
models of their real architectures, through ``tire run --profile diffusion``: the coordinator's schedule,
the stages' model loading from their TIRE_* variables, and the outputs, end to end on a CPU."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.cli import main
from services.testing.random_models import save_mv_refiner, save_sd_inpainting

ROOT = Path(__file__).parents[1]
MONKEY, FRONT = ROOT / "samples" / "monkey_lgm.ply", ROOT / "samples" / "monkey_front.png"


@pytest.mark.slow
def test_a_job_with_the_diffusion_profile(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TIRE_INPAINTER_MODEL", str(save_sd_inpainting(tmp_path / "sd", "tiny")))
    monkeypatch.setenv("TIRE_REFINER_MODEL", str(save_mv_refiner(tmp_path / "mv", "tiny")))
    monkeypatch.setenv("TIRE_REFINER_NUM_INFERENCE_STEPS", "10")
    out = tmp_path / "out"
    argv = ["run", str(MONKEY), str(FRONT), "-o", str(out), "--profile", "diffusion"]
    argv += ["--resolution", "64", "--orbit-step", "90", "--fit-steps", "3"]
    assert main(argv) == 0
    assert "Job succeeded" in capsys.readouterr().out

    report = json.loads((out / "report.json").read_text())
    assert report["azimuths_deg"] == [0, 90, 180, 270]
    steps = report["step_seconds"]
    assert {"fit_subject", "refine", "reconstruct"} <= set(steps)
    assert sum("/inpaint/" in name for name in steps) == 3  # every view but the source
    # The tiny models have random weights: the repair is noise, but only where the tracker found the
    # subject unobserved; the source view is fixed, so its re-render stays close to the original.
    (frame,) = report["frames"]
    assert frame["source_view"]["foreground_psnr_db"] > 20
    assert [ring["targets_deg"] for ring in frame["rings"]] == [[90, 270], [180]]
    sheet = np.asarray(Image.open(out / "contact_sheet.png"))
    assert sheet.ndim == 3 and sheet.shape[0] > 64

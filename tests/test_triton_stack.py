"""``tire up --triton`` as a user runs it: the stack beside a real tritonserver serving tiny random-weight
models, jobs submitted with ``tire submit`` run their neural stages on Triton, and a version published
with ``tire models publish`` reaches the next job without any process restarting."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest

from services.cli import main
from services.common.triton import triton_binary

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[1]
MONKEY, FRONT = ROOT / "samples" / "monkey_lgm.ply", ROOT / "samples" / "monkey_front.png"

try:
    triton_binary()
except FileNotFoundError as exc:  # `make test` runs `make triton` first
    pytest.skip(str(exc), allow_module_level=True)


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (Linux ``/proc``)."""
    found: set[int] = set()
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        found |= {int(child), *descendants(int(child))}
    return found


def test_jobs_run_on_triton_and_a_published_version_reaches_the_next_job(
    tire_up, tmp_path, monkeypatch, capsys
):
    state = tmp_path / "stack"
    with tire_up(state, "--triton", timeout_s=420) as (target, process, printed):
        triton_url = re.search(r"  triton\s+(\S+)", printed).group(1)
        repository = re.search(r"repository (s3://\S+)", printed).group(1)
        store_env = state / "store.env"
        assert stat.S_IMODE(store_env.stat().st_mode) == 0o600
        variables = dict(line.split("=", 1) for line in store_env.read_text().splitlines())
        assert variables["TIRE_S3_SECRET_KEY"] not in printed  # the secret stays in the file
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
        assert stat.S_IMODE((state / "token").stat().st_mode) == 0o600
        monkeypatch.setenv("TIRE_TOKEN_FILE", str(state / "token"))

        def job() -> dict[str, dict]:
            spec = [str(MONKEY), str(FRONT), "--resolution", "64", "--orbit-step", "90", "--fit-steps", "2"]
            assert main(["submit", *spec, "--watch", "--coordinator", target]) == 0
            job_id = capsys.readouterr().out.splitlines()[0].strip()
            out = tmp_path / job_id
            assert main(["get", job_id, "-o", str(out), "--coordinator", target]) == 0
            report = json.loads((out / "report.json").read_text())
            return {m["stage"]: m for m in report["models"]}

        first = job()
        assert first["inpainter"]["backend"] == "sd-lora" and first["inpainter"]["version"] == "1"
        assert first["inpainter"]["model"] == f"triton://{triton_url}/inpaint"
        assert (first["refiner"]["backend"], first["refiner"]["version"]) == ("mv-diffusion", "1")
        processes = descendants(process.pid)

        bucket = repository.removeprefix("s3://").split("/")[0]
        weights = f"s3://{bucket}/models/tiny-inpainter"  # what the stack published as version 1
        publish = ["models", "publish", "inpainter", weights, "--repository", repository]
        assert main([*publish, "--triton", triton_url]) == 0
        assert "version 2" in capsys.readouterr().out

        second = job()
        assert second["inpainter"]["version"] == "2"  # the next job runs the new version
        assert second["refiner"]["version"] == "1"  # and the other stage's stays
        # Nothing restarted: every process is still there, and the only new ones are Triton's stubs of the
        # new version (version 1's stay loaded for jobs pinned to it).
        (triton,) = (
            pid for pid in processes if Path(f"/proc/{pid}/comm").read_text().strip() == "tritonserver"
        )
        added = descendants(process.pid) - processes
        assert processes <= descendants(process.pid) and added and added <= descendants(triton)

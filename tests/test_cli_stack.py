"""`tire up` as a user runs it, and the remote commands against it: submit, watch, get, list, cancel,
describe; then Ctrl-C stops everything cleanly."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.cli import main

ROOT = Path(__file__).parents[1]
MONKEY, FRONT = ROOT / "samples" / "monkey_lgm.ply", ROOT / "samples" / "monkey_front.png"


def free_block(size: int) -> int:
    """A base port with ``size`` consecutive free ports, and free ports 1000 above them (metrics)."""
    for base in range(42_000, 48_000, 10):
        try:
            for port in [*range(base, base + size), *range(base + 1000, base + 1000 + size)]:
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no free block of ports")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """`tire up` on free ports; yields the coordinator's target and the process."""
    base = free_block(6)
    state = tmp_path_factory.mktemp("stack")
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up", "--state", str(state), "--port", str(base)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines = []
    deadline = time.monotonic() + 240
    while not any("Ctrl-C stops everything" in line for line in lines):
        line = process.stdout.readline()
        if not line or time.monotonic() > deadline:
            process.kill()
            process.wait()
            process.stdout.close()
            pytest.fail("tire up did not come up:\n" + "".join(lines))
        lines.append(line)
    yield f"127.0.0.1:{base}", process, "".join(lines)
    if process.poll() is None:
        process.kill()
        process.wait()
    process.stdout.close()


@pytest.mark.slow
def test_tire_up_prints_every_endpoint(stack):
    target, _, printed = stack
    for name in ("renderer", "tracker", "inpainter", "refiner", "reconstructor", "coordinator", "s3"):
        assert f"  {name}" in printed
    assert f"coordinator    {target}" in printed


@pytest.mark.slow
def test_submit_watch_get_list_and_describe_against_the_stack(stack, tmp_path, capsys):
    target = stack[0]
    spec = [str(MONKEY), str(FRONT), "--resolution", "64", "--orbit-step", "60"]
    assert main(["submit", *spec, "--watch", "--coordinator", target]) == 0
    printed = capsys.readouterr().out
    job_id = printed.splitlines()[0].strip()
    assert job_id.startswith("job-") and f"Job {job_id} succeeded." in printed

    out = tmp_path / "outputs"
    assert main(["get", job_id, "-o", str(out), "--coordinator", target]) == 0
    assert "succeeded" in capsys.readouterr().out
    assert (out / "repaired.ply").stat().st_size > 0 and (out / "report.json").stat().st_size > 0

    assert main(["list", "--coordinator", target]) == 0
    assert job_id in capsys.readouterr().out
    assert main(["cancel", job_id, "--coordinator", target]) == 0  # finished: unchanged
    assert "succeeded" in capsys.readouterr().out
    assert main(["describe", "--coordinator", target]) == 0
    described = capsys.readouterr().out
    assert "inpainter" in described and "colour on cpu" in described


@pytest.mark.slow
def test_errors_come_back_as_status_lines(stack, capsys):
    assert main(["get", "job-000000000000", "--coordinator", stack[0]]) == 2
    assert "NOT_FOUND" in capsys.readouterr().err


@pytest.mark.slow
def test_ctrl_c_stops_the_stack_cleanly(stack):
    _, process, _ = stack
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 0

"""`tire up` as a user runs it, and the remote commands against it: submit, watch, get, list, cancel,
describe; then Ctrl-C stops everything cleanly."""

import os
import re
import shutil
import signal
import tempfile
from pathlib import Path

import psycopg
import pytest

from services.cli import main
from services.common.clients import wait_serving
from services.testing.postgres import LocalPostgres, require_postgres

ROOT = Path(__file__).parents[1]
MONKEY, FRONT = ROOT / "samples" / "monkey_lgm.ply", ROOT / "samples" / "monkey_front.png"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tire_up):
    """`tire up` on free ports, and its token for the commands (as its printout says); yields the
    coordinator's target, the process and what it printed."""
    state = tmp_path_factory.mktemp("stack")
    with tire_up(state) as running, pytest.MonkeyPatch.context() as env:
        env.setenv("TIRE_TOKEN_FILE", str(state / "token"))
        env.delenv("TIRE_TOKEN", raising=False)
        yield running


@pytest.mark.slow
def test_tire_up_prints_every_endpoint(stack):
    target, _, printed = stack
    for name in ("renderer", "tracker", "inpainter", "refiner", "reconstructor", "coordinator", "s3"):
        assert f"  {name}" in printed
    assert f"coordinator    {target}" in printed
    assert re.search(r"The store: endpoint http://127\.0\.0\.1:\d+, bucket \S+, access key \S+", printed)


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
    assert main(["delete", job_id, "--coordinator", target]) == 0
    assert f"Deleted {job_id}" in capsys.readouterr().out
    assert main(["get", job_id, "--coordinator", target]) == 2
    assert main(["describe", "--coordinator", target]) == 0
    described = capsys.readouterr().out
    assert "inpainter" in described and "colour on cpu" in described


@pytest.mark.slow
def test_errors_come_back_as_status_lines(stack, capsys, tmp_path):
    assert main(["get", "job-000000000000", "--coordinator", stack[0]]) == 2
    assert "NOT_FOUND" in capsys.readouterr().err
    assert main(["submit", str(MONKEY), str(FRONT), "--resolution", "7", "--coordinator", stack[0]]) == 2
    assert "INVALID_ARGUMENT: `spec.resolution`" in (err := capsys.readouterr().err)
    assert "\n  field spec.resolution\n" in err  # from the BadRequest in the status details
    # A token of a principal the stack does not know, from `tire tokens new`.
    assert main(["tokens", "new", "mallory"]) == 0
    token, entry = capsys.readouterr().out.split()[:2]
    assert token.startswith("tire_") and entry.startswith("sha256:") and "mallory" not in token
    (tmp_path / "token").write_text(token)
    assert main(["list", "--coordinator", stack[0], "--token-file", str(tmp_path / "token")]) == 2
    assert "UNAUTHENTICATED: the bearer token is not valid here" in capsys.readouterr().err


@pytest.mark.slow
def test_a_service_that_dies_is_started_again_and_the_stack_goes_on(stack, capsys):
    target, process, printed = stack
    port = int(re.search(r"  renderer\s+127\.0\.0\.1:(\d+)", printed).group(1))
    (renderer,) = [
        pid
        for pid in Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        if b"services.renderer.server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    os.kill(int(renderer), signal.SIGKILL)
    lines = [process.stdout.readline() for _ in range(2)]
    assert "tire: renderer exited with code -9; starting it again in 1 s" in lines[0]
    assert "tire: renderer started again" in lines[1]
    assert wait_serving(f"127.0.0.1:{port}", 120)
    assert process.poll() is None  # the rest of the stack never stopped
    assert main(["describe", "--coordinator", target]) == 0
    assert "renderer" in capsys.readouterr().out


@pytest.mark.slow
def test_ctrl_c_stops_the_stack_cleanly(stack):
    _, process, _ = stack
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 0


@pytest.mark.slow
def test_tire_up_postgres_keeps_the_jobs_in_a_server_whose_data_stays_in_the_state_folder(
    tire_up, monkeypatch, capsys
):
    require_postgres()
    # Not tmp_path: as root, the server runs as the postgres user, who must reach the folder.
    state = Path(tempfile.mkdtemp(prefix="tire-up-postgres-"))
    state.chmod(0o755)
    try:
        with tire_up(state, "--postgres", "--web-port", "-1") as (target, process, printed):
            found = re.search(r"\n  postgres\s+(postgresql://tire@127\.0\.0\.1:\d+/tire)\s", printed)
            assert found, printed
            url = found.group(1)
            monkeypatch.setenv("TIRE_TOKEN_FILE", str(state / "token"))
            monkeypatch.delenv("TIRE_TOKEN", raising=False)
            spec = [str(MONKEY), str(FRONT), "--resolution", "64", "--orbit-step", "60"]
            assert main(["submit", *spec, "--coordinator", target]) == 0
            job_id = capsys.readouterr().out.splitlines()[0].strip()
            with psycopg.connect(url) as connection:
                assert connection.execute("SELECT id FROM jobs").fetchall() == [(job_id,)]
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=60) == 0
        # Ctrl-C stopped the server too; its data stayed in the state folder, and no SQLite file was made.
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, connect_timeout=2)
        assert not (state / "coordinator.sqlite").exists()
        with LocalPostgres(state / "postgres") as again, again.connect() as connection:
            assert connection.execute("SELECT id FROM jobs").fetchall() == [(job_id,)]
    finally:
        shutil.rmtree(state, ignore_errors=True)

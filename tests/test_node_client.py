"""An integrator's client in another language: `clients/node/scenario.mjs`, written from the protos alone
(`@grpc/proto-loader` at run time, no generated code), drives one whole job against `tire up`: presigned
PUTs, SubmitJob, WatchJob to the end (cut once and resumed), GetJob, presigned GETs checked against the
job's sha256s; then health and reflection by hand-written protobuf, the rich error model's trailer
decoded, and a second job cancelled while it runs.

Needs `node` (20 or later, for `fetch`) and `npm`; without them the test skips. `npm ci` runs only when
`clients/node/node_modules` is missing or does not match `package-lock.json`, so a second run needs no
registry.
"""

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from tire.v1 import coordinator_pb2, coordinator_pb2_grpc

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[1]
CLIENT = ROOT / "clients" / "node"
SCENARIO_TIMEOUT_S = 240


def installed_matches_lock() -> bool:
    """Whether ``node_modules`` holds exactly the packages ``package-lock.json`` pins (npm keeps a copy of
    what it installed in ``node_modules/.package-lock.json``)."""
    installed = CLIENT / "node_modules" / ".package-lock.json"
    if not installed.is_file():
        return False

    def versions(lock: Path) -> dict[str, str]:
        packages = json.loads(lock.read_text())["packages"]
        return {name: entry.get("version", "") for name, entry in packages.items() if name}

    return versions(installed) == versions(CLIENT / "package-lock.json")


@pytest.fixture(scope="module")
def node() -> str:
    """The ``node`` binary, with the client's locked dependencies installed."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip(f"needs node and npm on PATH to run {CLIENT / 'scenario.mjs'} (node={node}, npm={npm})")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < 20:
        pytest.skip(f"needs Node 20 or later (global fetch, util.parseArgs); found {version}")
    if not installed_matches_lock():
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=CLIENT, capture_output=True, text=True, timeout=300
        )
        if done.returncode != 0:
            pytest.fail(f"npm ci in {CLIENT} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return node


def test_a_node_client_runs_a_whole_job_through_the_public_api(node, tire_up, tmp_path):
    state, out = tmp_path / "stack", tmp_path / "outputs"
    with tire_up(state) as (target, _, _):
        # `tire up` writes the caller's token there once the coordinator checks tokens; a stack that
        # issues tokens must also refuse calls without one, so the negative check runs exactly then.
        token_file = state / "token"
        token = token_file.read_text().strip() if token_file.is_file() else ""
        env = {
            **{key: value for key, value in os.environ.items() if not key.startswith("TIRE_")},
            "TIRE_TOKEN": token,
            "TIRE_CHECK_UNAUTHENTICATED": "1" if token else "0",
        }
        done = subprocess.run(
            [node, "scenario.mjs", "--target", target, "--out", str(out), "--watch-timeout-s", "180"],
            cwd=CLIENT,
            env=env,
            capture_output=True,
            text=True,
            timeout=SCENARIO_TIMEOUT_S,
        )
        transcript = f"exit code {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
        assert done.returncode == 0, transcript
        summary = json.loads(done.stdout.strip().splitlines()[-1])

        # The job as the Python stubs see it, to check what the Node client reported and wrote.
        metadata = [("authorization", f"Bearer {token}")] if token else None
        with grpc.insecure_channel(target) as channel:
            stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
            request = coordinator_pb2.GetJobRequest(job_id=summary["job_id"])
            job = stub.GetJob(request, metadata=metadata, timeout=30).job
            request = coordinator_pb2.GetJobRequest(job_id=summary["cancel"]["job_id"])
            cancelled = stub.GetJob(request, metadata=metadata, timeout=30).job
            request = coordinator_pb2.WatchJobRequest(job_id=summary["job_id"])
            history = [response.event for response in stub.WatchJob(request, metadata=metadata, timeout=30)]

    assert summary["state"] == "JOB_STATE_SUCCEEDED" == coordinator_pb2.JobState.Name(job.state), transcript
    assert "finished JOB_STATE_SUCCEEDED" in done.stdout and summary["events"] > 0, transcript
    # Cut mid-job and resumed, the watch still saw every event once.
    assert summary["reconnects"] >= 1 and "cutting the stream after event 5" in done.stdout, transcript
    assert summary["events"] == len(history) == history[-1].sequence, transcript
    (frame,) = job.outputs.repaired.frames
    repaired = out / "repaired.ply"
    assert repaired.read_bytes().startswith(b"ply\n")
    assert hashlib.sha256(repaired.read_bytes()).hexdigest() == frame.sha256
    assert summary["outputs"]["repaired"][0]["sha256"] == frame.sha256
    report = json.loads((out / "report.json").read_text())
    assert isinstance(report, dict) and report
    assert hashlib.sha256((out / "report.json").read_bytes()).hexdigest() == job.outputs.report.sha256
    written = {Path(item["path"]).name: item for item in summary["files"]}
    assert set(written) == {"repaired.ply", "report.json"}
    assert written["repaired.ply"]["size_bytes"] == repaired.stat().st_size
    if token:
        statuses = [check["status"] for check in summary["unauthenticated"]]
        assert statuses == ["UNAUTHENTICATED"] * 2, transcript
        assert [check["status_details"]["code"] for check in summary["unauthenticated"]] == [16, 16], (
            transcript
        )

    # Health and reflection, called by hand (no generated code, no token).
    assert summary["health"] == {"status": "SERVING", "code": 1}, transcript
    assert {
        "tire.v1.CoordinatorService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    } <= set(summary["reflection"]["services"]), transcript

    # The second job, cancelled at its first step, finished CANCELLED (and the Python stubs agree).
    cancel = summary["cancel"]
    assert cancel["job_id"] != summary["job_id"], transcript
    assert cancel["state"] == "JOB_STATE_CANCELLED" == coordinator_pb2.JobState.Name(cancelled.state), (
        transcript
    )
    assert cancel["cancel_answer"] in {"JOB_STATE_RUNNING", "JOB_STATE_CANCELLED"}, transcript
    assert "finished JOB_STATE_CANCELLED" in done.stdout, transcript

    # The bad request's google.rpc.Status, decoded from grpc-status-details-bin by the Node client.
    bad = summary["bad_request"]
    assert bad["status"] == "INVALID_ARGUMENT" and bad["status_details"]["code"] == 3, transcript
    details = bad["status_details"]["details"]
    types = [detail["type_url"].rsplit("/", 1)[-1] for detail in details]
    assert {"google.rpc.ErrorInfo", "google.rpc.BadRequest"} <= set(types), transcript
    (error_info,) = [detail for detail in details if detail["type_url"].endswith("/google.rpc.ErrorInfo")]
    assert error_info["reason"] and error_info["domain"], transcript
    (bad_request,) = [detail for detail in details if detail["type_url"].endswith("/google.rpc.BadRequest")]
    assert bad_request["field_violations"][0]["field"] == "spec.resolution", transcript

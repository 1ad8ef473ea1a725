"""The `tire` command in-process: `tire run` on the bundled samples, `tire describe`, bad input."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from services.cli import main
from services.common.errors import ConfigError
from services.common.formats import read_splats
from services.common.gaussians import read_ply
from services.testing.format_bounds import assert_within_spz

ROOT = Path(__file__).parents[1]
MONKEY, FRONT = ROOT / "samples" / "monkey_lgm.ply", ROOT / "samples" / "monkey_front.png"


def test_run_writes_the_outputs(tmp_path, capsys):
    out = tmp_path / "monkey"
    assert (
        main(["run", str(MONKEY), str(FRONT), "-o", str(out), "--resolution", "64", "--orbit-step", "60"])
        == 0
    )
    printed = capsys.readouterr().out
    assert "Job succeeded" in printed and str(out) in printed
    for name in ("repaired.ply", "contact_sheet.png", "turntable.gif", "report.json"):
        assert (out / name).stat().st_size > 0
    report = json.loads((out / "report.json").read_text())
    assert report["azimuths_deg"] == [0, 60, 120, 180, 240, 300]
    assert len(list((out / "rings").glob("*_mask.png"))) == 5


def test_run_repairs_a_4d_asset_from_folders(tmp_path):
    blob = ROOT / "samples" / "blob4d"
    out = tmp_path / "blob"
    args = ["run", str(blob), str(blob), "-o", str(out), "--resolution", "64", "--orbit-step", "90"]
    assert main(args) == 0
    assert sorted(p.name for p in out.glob("repaired_*.ply")) == [f"repaired_{t:02d}.ply" for t in range(4)]


def test_run_refuses_a_bad_spec_with_the_field(tmp_path):
    with pytest.raises(SystemExit, match=r"`spec\.resolution`"):
        main(["run", str(MONKEY), str(FRONT), "-o", str(tmp_path), "--resolution", "7"])


def test_run_refuses_missing_inputs(tmp_path):
    with pytest.raises(SystemExit, match="no asset"):
        main(["run", str(tmp_path / "missing.ply"), str(FRONT), "-o", str(tmp_path)])


def test_convert_goes_through_every_format_and_back(tmp_path, capsys):
    """ply -> spz -> splat -> ply, each format read from the content (the `.spz` misnamed on purpose),
    and the file written whole or not at all."""
    spz, splat, ply = tmp_path / "monkey.bin", tmp_path / "monkey.splat", tmp_path / "back.ply"
    assert main(["convert", str(MONKEY), str(spz), "--format", "spz"]) == 0
    assert main(["convert", str(spz), str(splat)]) == 0
    assert main(["convert", str(splat), str(ply)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(", ")[1] for line in printed] == ["spz", "splat", "ply"]
    assert all("36,295 Gaussians" in line for line in printed)
    back, original = read_ply(ply), read_ply(MONKEY)
    assert abs(back.means - original.means).max() < 2.0**-12  # spz's positions; splat kept them
    assert main(["convert", str(MONKEY), str(tmp_path / "monkey.obj")]) == 2
    assert "must end in one of .ply, .spz, .glb, .sog, .splat" in capsys.readouterr().err
    assert not (tmp_path / "monkey.obj").exists()
    (tmp_path / "junk.ply").write_bytes(b"ply\nformat nonsense\n")
    assert main(["convert", str(tmp_path / "junk.ply"), str(tmp_path / "out.spz")]) == 2
    assert not (tmp_path / "out.spz").exists()


def test_run_takes_an_spz_asset_and_delivers_the_formats_asked_for(tmp_path):
    asset = tmp_path / "monkey.spz"
    assert main(["convert", str(MONKEY), str(asset)]) == 0
    out = tmp_path / "out"
    args = ["run", str(asset), str(FRONT), "-o", str(out), "--resolution", "64", "--orbit-step", "90"]
    assert main([*args, "--format", "spz", "--format", "splat"]) == 0
    assert {p.name for p in out.glob("repaired.*")} == {"repaired.ply", "repaired.spz", "repaired.splat"}
    repaired = read_ply(out / "repaired.ply")
    assert_within_spz(read_splats(out / "repaired.spz"), repaired)


def test_describe_lists_the_embedded_stages(capsys):
    assert main(["describe"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["renderer", "cpu"],
        ["tracker", "geometric"],
        ["inpainter", "colour"],
        ["refiner", "consensus"],
        ["reconstructor", "colour-solve"],
    ]


def test_a_reader_that_stops_early_gets_no_traceback():
    # `tire describe | head -c 0`: the pipe is closed before the first line is written.
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "describe"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process.stdout.close()
    with process.stderr:
        stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 128 + signal.SIGPIPE
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr


def test_the_profile_names_are_the_embedded_profiles():
    from services.cli import PROFILE_NAMES
    from services.embedded import PROFILES

    assert PROFILE_NAMES == tuple(PROFILES)


def test_models_push_puts_a_model_folder_where_a_backend_finds_it(tmp_path, s3, store, monkeypatch, capsys):
    from services.common.models import resolve_model

    model = tmp_path / "model"
    (model / "unet").mkdir(parents=True)
    (model / "model_index.json").write_text('{"_class_name": "Pipeline"}')
    (model / "unet" / "weights.safetensors").write_bytes(bytes(range(256)) * 1000)
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    prefix = f"s3://{s3.bucket}/models/demo-v1"
    assert main(["models", "push", str(model), prefix]) == 0
    assert "2 files under" in capsys.readouterr().out

    folder = Path(resolve_model(prefix, store=store, cache_dir=tmp_path / "cache"))
    assert (folder / "unet" / "weights.safetensors").read_bytes() == bytes(range(256)) * 1000
    assert (folder / "model_index.json").read_text() == '{"_class_name": "Pipeline"}'
    assert resolve_model(prefix, store=store, cache_dir=tmp_path / "cache") == str(folder)  # cached

    assert main(["models", "push", str(tmp_path / "missing"), prefix]) == 2
    assert "folder" in capsys.readouterr().err


def test_publish_options_are_json_values_or_strings():
    from services.cli import version_options

    assert version_options(["trust_remote_code=true", "resolution=256", "prompt=a photo of sks"]) == {
        "trust_remote_code": True,
        "resolution": 256,
        "prompt": "a photo of sks",
    }
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        version_options(["trust_remote_code"])


def test_outputs_replaced_in_the_store_are_refused_not_saved(store, tmp_path):
    import urllib.request

    from tire.v1 import common_pb2, coordinator_pb2

    from services.client import save_outputs
    from services.common.errors import IntegrityError

    ref = store.put_bytes(b"ply\nthe repaired asset\n", suffix=".ply")
    outputs = coordinator_pb2.JobOutputs(
        repaired=common_pb2.AssetRef(frames=[ref]),
        contact_sheet=ref,
        change_map=ref,
        turntable=ref,
        report=ref,
    )
    job = coordinator_pb2.Job(id="job-000000000001", outputs=outputs)
    assert len(save_outputs(job, store, tmp_path / "before")) == 5

    # Bytes replaced in the store behind the coordinator's back (by whoever holds the store's keys).
    put = urllib.request.Request(store.presigned_put(ref.uri.split("/", 3)[3]), data=b"garbage", method="PUT")
    urllib.request.urlopen(put, timeout=30).close()
    assert store.get_bytes(ref.uri) == b"garbage"
    with pytest.raises(IntegrityError, match=r"repaired\.ply: the bytes at .* hash to"):
        save_outputs(job, store, tmp_path / "after")
    assert not (tmp_path / "after" / "repaired.ply").exists()

"""The chart's post-install/post-upgrade hook: publish each Triton stage's weights, once.

    python publish_models.py --repository s3://BUCKET/PREFIX --triton PODS_HOST:PORT STAGE=WEIGHTS...

For each STAGE=WEIGHTS (the stage's model value in the chart's values):
1. The settings a version of those weights serves are the stage's ``version_settings(WEIGHTS)``.
2. If the newest version under the repository serves exactly those settings, nothing is done: an upgrade
   that leaves the model value alone publishes nothing (publishing on every upgrade would add a version
   each time and push the previous, still good, one out of the two Triton keeps loaded).
3. Otherwise ``tire models publish STAGE WEIGHTS`` writes the next version and loads it on one Triton pod
   (a version that fails to load is removed and fails the hook; the one served before keeps serving),
   then the new version is loaded on every other ready pod. ``--triton`` names the pods' headless
   Service, which resolves to one address per ready pod; a pod that starts later loads the newest versions
   itself (``--load-model=*``).

It waits for at least one ready Triton pod first (on install the hook starts with Triton). It needs the
project (the Triton image has it) and ``TIRE_S3_*``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import socket
import sys
import time

from services.cli import main as tire
from services.common import model_repository, registry
from services.common.store import ObjectStore, StoreSettings
from services.common.triton import load_model

POLL_S = 5.0


def pod_addresses(target: str) -> list[str]:
    """``host:port`` of every address the headless Service ``target`` (``host:port``) resolves to."""
    host, _, port = target.rpartition(":")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except socket.gaierror:
        return []
    ips = sorted({info[4][0] for info in infos})
    return [f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}" for ip in ips]


def ready_pods(target: str) -> list[str]:
    """The ready Triton pods behind ``target``, waiting (forever; the Job has a deadline) for one."""
    import tritonclient.grpc as triton_grpc

    while True:
        ready = []
        for address in pod_addresses(target):
            try:
                with triton_grpc.InferenceServerClient(address) as client:
                    if client.is_server_ready():
                        ready.append(address)
            except Exception:  # starting or going: not ready
                pass
        if ready:
            return ready
        print(f"waiting for a ready Triton pod behind {target}", flush=True)
        time.sleep(POLL_S)


def newest_settings(store: ObjectStore, repository: str, models) -> tuple[int, dict | None]:
    """The newest version of ``models`` under ``repository`` and the settings it serves (0, None: none)."""
    versions = model_repository.published_versions(store, repository, models)
    if not versions:
        return 0, None
    key = f"{repository.rstrip('/')}/{models[0].name}/{versions[-1]}/{model_repository.SETTINGS_FILE}"
    return versions[-1], json.loads(store.get_bytes(key))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", required=True, help="s3://BUCKET/PREFIX")
    parser.add_argument("--triton", required=True, help="the Triton pods' headless Service, HOST:PORT")
    parser.add_argument("stages", nargs="+", metavar="STAGE=WEIGHTS")
    args = parser.parse_args(argv)

    store = ObjectStore(StoreSettings.from_env())
    for item in args.stages:
        stage, _, weights = item.partition("=")
        if stage not in registry.TRITON_STAGES or not weights:
            parser.error(
                f"{item!r}: expected STAGE=WEIGHTS with STAGE one of {', '.join(registry.TRITON_STAGES)}"
            )
        declared = importlib.import_module(registry.stage(stage).triton_models)
        version, serving = newest_settings(store, args.repository, declared.MODELS)
        if serving == declared.version_settings(weights):
            print(f"{stage}: version {version} already serves {weights}; nothing to publish", flush=True)
            continue
        first, *others = ready_pods(args.triton)
        command = ["models", "publish", stage, weights, "--repository", args.repository, "--triton", first]
        print("tire " + " ".join(command), flush=True)
        if tire(command) != 0:
            return 1
        for address in others:
            for model in declared.MODELS:
                load_model(address, model.name)
            print(f"{stage}: loaded on {address}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

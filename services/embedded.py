"""Embedded mode: the five stages in this process, behind the same stub interface as remote services.

This module is the one place that imports every stage (each server module named in
``services.common.registry``; the services themselves never import each other): ``tire run`` and the
tests compose a whole TIRE system from it without any network.

A profile names each stage's backend: ``cpu`` (the defaults: any CPU, no weights), ``paper`` (the
GPU backends of the paper) or ``diffusion`` (the paper's inpainter and refiner with the CPU geometry
stages: no CUDA needed, slow on a CPU at real model sizes). Each stage's other settings, the models
included (``TIRE_INPAINTER_MODEL``, ``TIRE_REFINER_MODEL``, ``TIRE_TRACKER_COTRACKER_CHECKPOINT``), still
come from its ``TIRE_<STAGE>_*`` variables, as they would for the service.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass

from services.common.config import from_env
from services.common.errors import ConfigError, TireError
from services.common.registry import STAGES
from services.common.store import BlobStore
from services.coordinator.stages import InProcessStub, Stages


@dataclass(frozen=True)
class Profile:
    """The backend of each of the five stages (each backend has its own default strength)."""

    backends: dict[str, str]


PROFILES = {
    "cpu": Profile(
        backends={
            "renderer": "cpu",
            "tracker": "geometric",
            "inpainter": "colour",
            "refiner": "consensus",
            "reconstructor": "colour-solve",
        },
    ),
    "paper": Profile(
        backends={
            "renderer": "gsplat",
            "tracker": "cotracker",
            "inpainter": "sd-lora",
            "refiner": "mv-diffusion",
            "reconstructor": "gsplat-optimize",
        },
    ),
    "diffusion": Profile(
        backends={
            "renderer": "cpu",
            "tracker": "geometric",
            "inpainter": "sd-lora",
            "refiner": "mv-diffusion",
            "reconstructor": "colour-solve",
        },
    ),
}


def embedded_servicers(store: BlobStore, profile: str = "cpu") -> dict[str, object]:
    """Each stage's servicer, built as its server builds it, with the profile's backend.

    Raises:
        ConfigError: an unknown profile, a backend this build lacks, or a bad ``TIRE_*`` variable.
    """
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    servicers = {}
    for stage in STAGES:
        name = stage.name
        server = importlib.import_module(stage.server)
        settings = dataclasses.replace(
            from_env(getattr(server, stage.settings), stage.env_prefix),
            backend=PROFILES[profile].backends[name],
        )
        try:
            servicers[name] = server.build_servicer(settings, store)
        except (ValueError, RuntimeError, ImportError, TireError) as exc:
            raise ConfigError(f"the {profile} profile cannot build the {name}: {exc}") from exc
    return servicers


def embedded_stages(store: BlobStore, profile: str = "cpu") -> Stages:
    """``Stages`` whose stubs call the in-process servicers of ``embedded_servicers``."""
    return Stages(**{name: InProcessStub(s) for name, s in embedded_servicers(store, profile).items()})

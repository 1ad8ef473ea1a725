"""The ``triton`` tracker backend: the cotracker backend with its model served by a Triton Inference Server.

The tracker service keeps its API, its request checks and its store I/O; ``OrbitVideoTracker`` (shared
with the in-process ``CoTrackerBackend``) builds the orbit videos and queries and turns tracks into
masks; each video goes to the ``track`` model (``services.tracker.triton_model``), which runs
``CoTrackerBackend.predict`` where Triton puts it. Its name is ``cotracker``: it computes what an
in-process cotracker backend of the same checkpoint computes.

Which version answers: ``version`` pinned, or "" for the newest Triton has ready. ``pinned(version)`` is
the same backend held to one version: a job runs every call on the version it started with
(``model_version`` in the requests), while a newly published one serves the next jobs.
"""

from __future__ import annotations

import numpy as np

from services.common.errors import InvalidArgument
from services.common.triton import ServedByTriton, TritonModels
from services.tracker.cotracker import OrbitVideoTracker, check_video
from services.tracker.triton_model import MODELS, TRACK


class TritonTrackBackend(ServedByTriton, OrbitVideoTracker):
    """``TrackerBackend`` over Triton's gRPC API.

    Args:
        url: Triton's gRPC address, ``host:port``.
        version: the model version to call ("" for the newest Triton has ready).
        query_stride: as ``OrbitVideoTracker``'s.

    Raises:
        ImportError: ``tritonclient`` is not installed.
    """

    def __init__(self, url: str, version: str = "", *, query_stride: int = 1):
        super().__init__(query_stride)
        self.models = TritonModels(url, [model.name for model in MODELS], version)

    def predict(
        self, rgb: np.ndarray, queries: np.ndarray, backward: bool, field: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """See ``OrbitVideoTracker.predict``: one request to the ``track`` model.

        Args:
            rgb: ``[T, H, W, 3]`` uint8 frames.
            queries: ``[N, 3]`` (t, x, y), sent as float32.
            backward: CoTracker's ``backward_tracking``.
            field: the request field the frames came from, for errors.

        Returns:
            tracks ``[T, N, 2]`` float32, visibility ``[T, N]`` bool (writable copies).

        Raises:
            InvalidArgument: frames or queries it cannot track, checked here before the call.
            Unavailable: Triton is unreachable. FailedPrecondition: it has no ready version.
        """
        check_video(rgb, queries, field)

        def refused(message: str) -> InvalidArgument:
            return InvalidArgument(field, "the video", f"was refused by the model: {message}")

        inputs = {
            "FRAMES": np.ascontiguousarray(rgb, dtype=np.uint8),
            "QUERIES": queries.astype(np.float32),
            "BACKWARD": np.array([backward], dtype=bool),
        }
        answer = self.models.infer(TRACK.name, inputs, refused)
        return np.array(answer["TRACKS"], np.float32), np.array(answer["VISIBILITY"], bool)

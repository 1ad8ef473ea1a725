from tire.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RenderRequest(_message.Message):
    __slots__ = ("asset", "time_step", "cameras", "orbit", "background_rgb", "write_previews")
    ASSET_FIELD_NUMBER: _ClassVar[int]
    TIME_STEP_FIELD_NUMBER: _ClassVar[int]
    CAMERAS_FIELD_NUMBER: _ClassVar[int]
    ORBIT_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_RGB_FIELD_NUMBER: _ClassVar[int]
    WRITE_PREVIEWS_FIELD_NUMBER: _ClassVar[int]
    asset: _common_pb2.AssetRef
    time_step: int
    cameras: _common_pb2.CameraSet
    orbit: _common_pb2.Orbit
    background_rgb: _containers.RepeatedScalarFieldContainer[float]
    write_previews: bool
    def __init__(self, asset: _Optional[_Union[_common_pb2.AssetRef, _Mapping]] = ..., time_step: _Optional[int] = ..., cameras: _Optional[_Union[_common_pb2.CameraSet, _Mapping]] = ..., orbit: _Optional[_Union[_common_pb2.Orbit, _Mapping]] = ..., background_rgb: _Optional[_Iterable[float]] = ..., write_previews: _Optional[bool] = ...) -> None: ...

class RenderResponse(_message.Message):
    __slots__ = ("views", "backend", "num_gaussians", "render_seconds")
    VIEWS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    NUM_GAUSSIANS_FIELD_NUMBER: _ClassVar[int]
    RENDER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    views: _common_pb2.ViewSet
    backend: str
    num_gaussians: int
    render_seconds: float
    def __init__(self, views: _Optional[_Union[_common_pb2.ViewSet, _Mapping]] = ..., backend: _Optional[str] = ..., num_gaussians: _Optional[int] = ..., render_seconds: _Optional[float] = ...) -> None: ...

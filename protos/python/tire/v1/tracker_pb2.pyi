from tire.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TrackRequest(_message.Message):
    __slots__ = ("frames", "queries", "backward_tracking", "model_version")
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    BACKWARD_TRACKING_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    frames: _common_pb2.ViewSet
    queries: _common_pb2.TensorRef
    backward_tracking: bool
    model_version: str
    def __init__(self, frames: _Optional[_Union[_common_pb2.ViewSet, _Mapping]] = ..., queries: _Optional[_Union[_common_pb2.TensorRef, _Mapping]] = ..., backward_tracking: _Optional[bool] = ..., model_version: _Optional[str] = ...) -> None: ...

class TrackResponse(_message.Message):
    __slots__ = ("tracks", "visibility")
    TRACKS_FIELD_NUMBER: _ClassVar[int]
    VISIBILITY_FIELD_NUMBER: _ClassVar[int]
    tracks: _common_pb2.TensorRef
    visibility: _common_pb2.TensorRef
    def __init__(self, tracks: _Optional[_Union[_common_pb2.TensorRef, _Mapping]] = ..., visibility: _Optional[_Union[_common_pb2.TensorRef, _Mapping]] = ...) -> None: ...

class LocateOptions(_message.Message):
    __slots__ = ("foreground_threshold", "depth_tolerance", "min_region_pixels", "dilation_pixels", "transfer_appearance")
    FOREGROUND_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DEPTH_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    MIN_REGION_PIXELS_FIELD_NUMBER: _ClassVar[int]
    DILATION_PIXELS_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_APPEARANCE_FIELD_NUMBER: _ClassVar[int]
    foreground_threshold: float
    depth_tolerance: float
    min_region_pixels: int
    dilation_pixels: int
    transfer_appearance: bool
    def __init__(self, foreground_threshold: _Optional[float] = ..., depth_tolerance: _Optional[float] = ..., min_region_pixels: _Optional[int] = ..., dilation_pixels: _Optional[int] = ..., transfer_appearance: _Optional[bool] = ...) -> None: ...

class LocateUnobservedRequest(_message.Message):
    __slots__ = ("views", "target_indices", "anchor_indices", "options", "model_version", "video")
    VIEWS_FIELD_NUMBER: _ClassVar[int]
    TARGET_INDICES_FIELD_NUMBER: _ClassVar[int]
    ANCHOR_INDICES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    views: _common_pb2.ViewSet
    target_indices: _containers.RepeatedScalarFieldContainer[int]
    anchor_indices: _containers.RepeatedScalarFieldContainer[int]
    options: LocateOptions
    model_version: str
    video: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, views: _Optional[_Union[_common_pb2.ViewSet, _Mapping]] = ..., target_indices: _Optional[_Iterable[int]] = ..., anchor_indices: _Optional[_Iterable[int]] = ..., options: _Optional[_Union[LocateOptions, _Mapping]] = ..., model_version: _Optional[str] = ..., video: _Optional[_Iterable[int]] = ...) -> None: ...

class LocateUnobservedResponse(_message.Message):
    __slots__ = ("unobserved", "anchor_index", "anchor_xy", "transferred_rgb", "unobserved_fraction")
    UNOBSERVED_FIELD_NUMBER: _ClassVar[int]
    ANCHOR_INDEX_FIELD_NUMBER: _ClassVar[int]
    ANCHOR_XY_FIELD_NUMBER: _ClassVar[int]
    TRANSFERRED_RGB_FIELD_NUMBER: _ClassVar[int]
    UNOBSERVED_FRACTION_FIELD_NUMBER: _ClassVar[int]
    unobserved: _common_pb2.TensorRef
    anchor_index: _common_pb2.TensorRef
    anchor_xy: _common_pb2.TensorRef
    transferred_rgb: _common_pb2.TensorRef
    unobserved_fraction: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, unobserved: _Optional[_Union[_common_pb2.TensorRef, _Mapping]] = ..., anchor_index: _Optional[_Union[_common_pb2.TensorRef, _Mapping]] = ..., anchor_xy: _Optional[_Union[_common_pb2.TensorRef, _Mapping]] = ..., transferred_rgb: _Optional[_Union[_common_pb2.TensorRef, _Mapping]] = ..., unobserved_fraction: _Optional[_Iterable[float]] = ...) -> None: ...

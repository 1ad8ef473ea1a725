from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Dtype(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[Dtype]
    DTYPE_UINT8: _ClassVar[Dtype]
    DTYPE_FLOAT32: _ClassVar[Dtype]
    DTYPE_INT32: _ClassVar[Dtype]
    DTYPE_FLOAT16: _ClassVar[Dtype]
    DTYPE_INT64: _ClassVar[Dtype]
    DTYPE_BOOL: _ClassVar[Dtype]
DTYPE_UNSPECIFIED: Dtype
DTYPE_UINT8: Dtype
DTYPE_FLOAT32: Dtype
DTYPE_INT32: Dtype
DTYPE_FLOAT16: Dtype
DTYPE_INT64: Dtype
DTYPE_BOOL: Dtype

class TensorRef(_message.Message):
    __slots__ = ("uri", "dtype", "shape", "sha256", "preview_uris")
    URI_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_URIS_FIELD_NUMBER: _ClassVar[int]
    uri: str
    dtype: Dtype
    shape: _containers.RepeatedScalarFieldContainer[int]
    sha256: str
    preview_uris: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, uri: _Optional[str] = ..., dtype: _Optional[_Union[Dtype, str]] = ..., shape: _Optional[_Iterable[int]] = ..., sha256: _Optional[str] = ..., preview_uris: _Optional[_Iterable[str]] = ...) -> None: ...

class ObjectRef(_message.Message):
    __slots__ = ("uri", "sha256", "size_bytes", "media_type")
    URI_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    uri: str
    sha256: str
    size_bytes: int
    media_type: str
    def __init__(self, uri: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., media_type: _Optional[str] = ...) -> None: ...

class AssetRef(_message.Message):
    __slots__ = ("frames",)
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    frames: _containers.RepeatedCompositeFieldContainer[ObjectRef]
    def __init__(self, frames: _Optional[_Iterable[_Union[ObjectRef, _Mapping]]] = ...) -> None: ...

class Intrinsics(_message.Message):
    __slots__ = ("fx", "fy", "cx", "cy")
    FX_FIELD_NUMBER: _ClassVar[int]
    FY_FIELD_NUMBER: _ClassVar[int]
    CX_FIELD_NUMBER: _ClassVar[int]
    CY_FIELD_NUMBER: _ClassVar[int]
    fx: float
    fy: float
    cx: float
    cy: float
    def __init__(self, fx: _Optional[float] = ..., fy: _Optional[float] = ..., cx: _Optional[float] = ..., cy: _Optional[float] = ...) -> None: ...

class Camera(_message.Message):
    __slots__ = ("world_to_camera", "intrinsics")
    WORLD_TO_CAMERA_FIELD_NUMBER: _ClassVar[int]
    INTRINSICS_FIELD_NUMBER: _ClassVar[int]
    world_to_camera: _containers.RepeatedScalarFieldContainer[float]
    intrinsics: Intrinsics
    def __init__(self, world_to_camera: _Optional[_Iterable[float]] = ..., intrinsics: _Optional[_Union[Intrinsics, _Mapping]] = ...) -> None: ...

class CameraSet(_message.Message):
    __slots__ = ("width", "height", "cameras")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CAMERAS_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    cameras: _containers.RepeatedCompositeFieldContainer[Camera]
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., cameras: _Optional[_Iterable[_Union[Camera, _Mapping]]] = ...) -> None: ...

class Orbit(_message.Message):
    __slots__ = ("azimuths_deg", "elevation_deg", "radius", "fovy_deg", "resolution", "center")
    AZIMUTHS_DEG_FIELD_NUMBER: _ClassVar[int]
    ELEVATION_DEG_FIELD_NUMBER: _ClassVar[int]
    RADIUS_FIELD_NUMBER: _ClassVar[int]
    FOVY_DEG_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    CENTER_FIELD_NUMBER: _ClassVar[int]
    azimuths_deg: _containers.RepeatedScalarFieldContainer[float]
    elevation_deg: float
    radius: float
    fovy_deg: float
    resolution: int
    center: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, azimuths_deg: _Optional[_Iterable[float]] = ..., elevation_deg: _Optional[float] = ..., radius: _Optional[float] = ..., fovy_deg: _Optional[float] = ..., resolution: _Optional[int] = ..., center: _Optional[_Iterable[float]] = ...) -> None: ...

class ViewSet(_message.Message):
    __slots__ = ("rgb", "alpha", "depth", "cameras", "background_rgb")
    RGB_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    CAMERAS_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_RGB_FIELD_NUMBER: _ClassVar[int]
    rgb: TensorRef
    alpha: TensorRef
    depth: TensorRef
    cameras: CameraSet
    background_rgb: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, rgb: _Optional[_Union[TensorRef, _Mapping]] = ..., alpha: _Optional[_Union[TensorRef, _Mapping]] = ..., depth: _Optional[_Union[TensorRef, _Mapping]] = ..., cameras: _Optional[_Union[CameraSet, _Mapping]] = ..., background_rgb: _Optional[_Iterable[float]] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribeResponse(_message.Message):
    __slots__ = ("service", "backend", "model", "version", "device", "available_backends", "settings", "model_version")
    class SettingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_BACKENDS_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    service: str
    backend: str
    model: str
    version: str
    device: str
    available_backends: _containers.RepeatedScalarFieldContainer[str]
    settings: _containers.ScalarMap[str, str]
    model_version: str
    def __init__(self, service: _Optional[str] = ..., backend: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., device: _Optional[str] = ..., available_backends: _Optional[_Iterable[str]] = ..., settings: _Optional[_Mapping[str, str]] = ..., model_version: _Optional[str] = ...) -> None: ...

class FitSettings(_message.Message):
    __slots__ = ("steps", "learning_rate", "rank", "prompt", "resolution", "flip", "max_rotation_deg", "clusters", "seed")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    FLIP_FIELD_NUMBER: _ClassVar[int]
    MAX_ROTATION_DEG_FIELD_NUMBER: _ClassVar[int]
    CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    steps: int
    learning_rate: float
    rank: int
    prompt: str
    resolution: int
    flip: bool
    max_rotation_deg: float
    clusters: int
    seed: int
    def __init__(self, steps: _Optional[int] = ..., learning_rate: _Optional[float] = ..., rank: _Optional[int] = ..., prompt: _Optional[str] = ..., resolution: _Optional[int] = ..., flip: _Optional[bool] = ..., max_rotation_deg: _Optional[float] = ..., clusters: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class FitProgress(_message.Message):
    __slots__ = ("step", "total_steps", "loss", "elapsed_seconds")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    step: int
    total_steps: int
    loss: float
    elapsed_seconds: float
    def __init__(self, step: _Optional[int] = ..., total_steps: _Optional[int] = ..., loss: _Optional[float] = ..., elapsed_seconds: _Optional[float] = ...) -> None: ...

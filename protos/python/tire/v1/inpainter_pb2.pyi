from tire.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FitSubjectRequest(_message.Message):
    __slots__ = ("images", "masks", "settings", "model_version")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    MASKS_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    images: _common_pb2.TensorRef
    masks: _common_pb2.TensorRef
    settings: _common_pb2.FitSettings
    model_version: str
    def __init__(self, images: _Optional[_Union[_common_pb2.TensorRef, _Mapping]] = ..., masks: _Optional[_Union[_common_pb2.TensorRef, _Mapping]] = ..., settings: _Optional[_Union[_common_pb2.FitSettings, _Mapping]] = ..., model_version: _Optional[str] = ...) -> None: ...

class SubjectModel(_message.Message):
    __slots__ = ("artifact", "backend", "base_model")
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    artifact: _common_pb2.ObjectRef
    backend: str
    base_model: str
    def __init__(self, artifact: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., backend: _Optional[str] = ..., base_model: _Optional[str] = ...) -> None: ...

class FitSubjectResponse(_message.Message):
    __slots__ = ("progress", "model")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    progress: _common_pb2.FitProgress
    model: SubjectModel
    def __init__(self, progress: _Optional[_Union[_common_pb2.FitProgress, _Mapping]] = ..., model: _Optional[_Union[SubjectModel, _Mapping]] = ...) -> None: ...

class InpaintRequest(_message.Message):
    __slots__ = ("images", "masks", "alpha", "subject", "strength", "seed", "num_inference_steps", "guidance_scale", "model_version", "alpha_views")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    MASKS_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    NUM_INFERENCE_STEPS_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ALPHA_VIEWS_FIELD_NUMBER: _ClassVar[int]
    images: _common_pb2.TensorRef
    masks: _common_pb2.TensorRef
    alpha: _common_pb2.TensorRef
    subject: SubjectModel
    strength: float
    seed: int
    num_inference_steps: int
    guidance_scale: float
    model_version: str
    alpha_views: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, images: _Optional[_Union[_common_pb2.TensorRef, _Mapping]] = ..., masks: _Optional[_Union[_common_pb2.TensorRef, _Mapping]] = ..., alpha: _Optional[_Union[_common_pb2.TensorRef, _Mapping]] = ..., subject: _Optional[_Union[SubjectModel, _Mapping]] = ..., strength: _Optional[float] = ..., seed: _Optional[int] = ..., num_inference_steps: _Optional[int] = ..., guidance_scale: _Optional[float] = ..., model_version: _Optional[str] = ..., alpha_views: _Optional[_Iterable[int]] = ...) -> None: ...

class InpaintResponse(_message.Message):
    __slots__ = ("images",)
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    images: _common_pb2.TensorRef
    def __init__(self, images: _Optional[_Union[_common_pb2.TensorRef, _Mapping]] = ...) -> None: ...

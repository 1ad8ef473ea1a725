from tire.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RefineRequest(_message.Message):
    __slots__ = ("views", "update_mask", "asset", "time_step", "source_index", "strength", "seed", "model_version")
    VIEWS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    ASSET_FIELD_NUMBER: _ClassVar[int]
    TIME_STEP_FIELD_NUMBER: _ClassVar[int]
    SOURCE_INDEX_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    views: _common_pb2.ViewSet
    update_mask: _common_pb2.TensorRef
    asset: _common_pb2.AssetRef
    time_step: int
    source_index: int
    strength: float
    seed: int
    model_version: str
    def __init__(self, views: _Optional[_Union[_common_pb2.ViewSet, _Mapping]] = ..., update_mask: _Optional[_Union[_common_pb2.TensorRef, _Mapping]] = ..., asset: _Optional[_Union[_common_pb2.AssetRef, _Mapping]] = ..., time_step: _Optional[int] = ..., source_index: _Optional[int] = ..., strength: _Optional[float] = ..., seed: _Optional[int] = ..., model_version: _Optional[str] = ...) -> None: ...

class RefineResponse(_message.Message):
    __slots__ = ("rgb",)
    RGB_FIELD_NUMBER: _ClassVar[int]
    rgb: _common_pb2.TensorRef
    def __init__(self, rgb: _Optional[_Union[_common_pb2.TensorRef, _Mapping]] = ...) -> None: ...

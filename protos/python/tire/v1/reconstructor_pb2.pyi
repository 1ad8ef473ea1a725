from tire.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReconstructOptions(_message.Message):
    __slots__ = ("keep_higher_sh", "prior_weight", "max_iterations", "tolerance")
    KEEP_HIGHER_SH_FIELD_NUMBER: _ClassVar[int]
    PRIOR_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    MAX_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    keep_higher_sh: bool
    prior_weight: float
    max_iterations: int
    tolerance: float
    def __init__(self, keep_higher_sh: _Optional[bool] = ..., prior_weight: _Optional[float] = ..., max_iterations: _Optional[int] = ..., tolerance: _Optional[float] = ...) -> None: ...

class ReconstructRequest(_message.Message):
    __slots__ = ("views", "initial", "time_step", "options", "view_weights", "locked_views", "joint_time_steps")
    VIEWS_FIELD_NUMBER: _ClassVar[int]
    INITIAL_FIELD_NUMBER: _ClassVar[int]
    TIME_STEP_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    VIEW_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    LOCKED_VIEWS_FIELD_NUMBER: _ClassVar[int]
    JOINT_TIME_STEPS_FIELD_NUMBER: _ClassVar[int]
    views: _common_pb2.ViewSet
    initial: _common_pb2.AssetRef
    time_step: int
    options: ReconstructOptions
    view_weights: _containers.RepeatedScalarFieldContainer[float]
    locked_views: _containers.RepeatedScalarFieldContainer[int]
    joint_time_steps: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, views: _Optional[_Union[_common_pb2.ViewSet, _Mapping]] = ..., initial: _Optional[_Union[_common_pb2.AssetRef, _Mapping]] = ..., time_step: _Optional[int] = ..., options: _Optional[_Union[ReconstructOptions, _Mapping]] = ..., view_weights: _Optional[_Iterable[float]] = ..., locked_views: _Optional[_Iterable[int]] = ..., joint_time_steps: _Optional[_Iterable[int]] = ...) -> None: ...

class ReconstructResponse(_message.Message):
    __slots__ = ("ply", "rms_error", "iterations", "gaussians_locked", "gaussians_kept", "gaussians_resolved", "higher_sh_kept", "joint_plys")
    PLY_FIELD_NUMBER: _ClassVar[int]
    RMS_ERROR_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    GAUSSIANS_LOCKED_FIELD_NUMBER: _ClassVar[int]
    GAUSSIANS_KEPT_FIELD_NUMBER: _ClassVar[int]
    GAUSSIANS_RESOLVED_FIELD_NUMBER: _ClassVar[int]
    HIGHER_SH_KEPT_FIELD_NUMBER: _ClassVar[int]
    JOINT_PLYS_FIELD_NUMBER: _ClassVar[int]
    ply: _common_pb2.ObjectRef
    rms_error: float
    iterations: int
    gaussians_locked: int
    gaussians_kept: int
    gaussians_resolved: int
    higher_sh_kept: bool
    joint_plys: _containers.RepeatedCompositeFieldContainer[_common_pb2.ObjectRef]
    def __init__(self, ply: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., rms_error: _Optional[float] = ..., iterations: _Optional[int] = ..., gaussians_locked: _Optional[int] = ..., gaussians_kept: _Optional[int] = ..., gaussians_resolved: _Optional[int] = ..., higher_sh_kept: _Optional[bool] = ..., joint_plys: _Optional[_Iterable[_Union[_common_pb2.ObjectRef, _Mapping]]] = ...) -> None: ...

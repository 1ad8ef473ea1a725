import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from tire.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState

class UploadFile(_message.Message):
    __slots__ = ("name", "size_bytes", "sha256", "media_type")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    size_bytes: int
    sha256: str
    media_type: str
    def __init__(self, name: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., media_type: _Optional[str] = ...) -> None: ...

class CreateUploadRequest(_message.Message):
    __slots__ = ("files",)
    FILES_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[UploadFile]
    def __init__(self, files: _Optional[_Iterable[_Union[UploadFile, _Mapping]]] = ...) -> None: ...

class Upload(_message.Message):
    __slots__ = ("name", "put_url", "object", "expires_at", "needs_upload")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PUT_URL_FIELD_NUMBER: _ClassVar[int]
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    NEEDS_UPLOAD_FIELD_NUMBER: _ClassVar[int]
    name: str
    put_url: str
    object: _common_pb2.ObjectRef
    expires_at: _timestamp_pb2.Timestamp
    needs_upload: bool
    def __init__(self, name: _Optional[str] = ..., put_url: _Optional[str] = ..., object: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., needs_upload: _Optional[bool] = ...) -> None: ...

class CreateUploadResponse(_message.Message):
    __slots__ = ("uploads",)
    UPLOADS_FIELD_NUMBER: _ClassVar[int]
    uploads: _containers.RepeatedCompositeFieldContainer[Upload]
    def __init__(self, uploads: _Optional[_Iterable[_Union[Upload, _Mapping]]] = ...) -> None: ...

class CreateDownloadRequest(_message.Message):
    __slots__ = ("job_id", "uris")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    URIS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    uris: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job_id: _Optional[str] = ..., uris: _Optional[_Iterable[str]] = ...) -> None: ...

class Download(_message.Message):
    __slots__ = ("uri", "get_url", "expires_at")
    URI_FIELD_NUMBER: _ClassVar[int]
    GET_URL_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    uri: str
    get_url: str
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, uri: _Optional[str] = ..., get_url: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateDownloadResponse(_message.Message):
    __slots__ = ("downloads",)
    DOWNLOADS_FIELD_NUMBER: _ClassVar[int]
    downloads: _containers.RepeatedCompositeFieldContainer[Download]
    def __init__(self, downloads: _Optional[_Iterable[_Union[Download, _Mapping]]] = ...) -> None: ...

class FixedRings(_message.Message):
    __slots__ = ("limits_deg",)
    LIMITS_DEG_FIELD_NUMBER: _ClassVar[int]
    limits_deg: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, limits_deg: _Optional[_Iterable[float]] = ...) -> None: ...

class AdaptiveRings(_message.Message):
    __slots__ = ("max_unobserved_fraction", "min_ring_width_deg")
    MAX_UNOBSERVED_FRACTION_FIELD_NUMBER: _ClassVar[int]
    MIN_RING_WIDTH_DEG_FIELD_NUMBER: _ClassVar[int]
    max_unobserved_fraction: float
    min_ring_width_deg: float
    def __init__(self, max_unobserved_fraction: _Optional[float] = ..., min_ring_width_deg: _Optional[float] = ...) -> None: ...

class RingSchedule(_message.Message):
    __slots__ = ("fixed", "adaptive", "source_only")
    FIXED_FIELD_NUMBER: _ClassVar[int]
    ADAPTIVE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ONLY_FIELD_NUMBER: _ClassVar[int]
    fixed: FixedRings
    adaptive: AdaptiveRings
    source_only: SourceOnly
    def __init__(self, fixed: _Optional[_Union[FixedRings, _Mapping]] = ..., adaptive: _Optional[_Union[AdaptiveRings, _Mapping]] = ..., source_only: _Optional[_Union[SourceOnly, _Mapping]] = ...) -> None: ...

class SourceOnly(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class JobSpec(_message.Message):
    __slots__ = ("asset", "references", "resolution", "orbit_step_deg", "elevation_deg", "rings", "strength", "refine_strength", "fit", "seed", "labels", "framing", "force", "output_formats", "webhook")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ASSET_FIELD_NUMBER: _ClassVar[int]
    REFERENCES_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    ORBIT_STEP_DEG_FIELD_NUMBER: _ClassVar[int]
    ELEVATION_DEG_FIELD_NUMBER: _ClassVar[int]
    RINGS_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    REFINE_STRENGTH_FIELD_NUMBER: _ClassVar[int]
    FIT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    FRAMING_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FORMATS_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_FIELD_NUMBER: _ClassVar[int]
    asset: _common_pb2.AssetRef
    references: _containers.RepeatedCompositeFieldContainer[_common_pb2.ObjectRef]
    resolution: int
    orbit_step_deg: float
    elevation_deg: float
    rings: RingSchedule
    strength: float
    refine_strength: float
    fit: _common_pb2.FitSettings
    seed: int
    labels: _containers.ScalarMap[str, str]
    framing: Framing
    force: bool
    output_formats: _containers.RepeatedScalarFieldContainer[str]
    webhook: Webhook
    def __init__(self, asset: _Optional[_Union[_common_pb2.AssetRef, _Mapping]] = ..., references: _Optional[_Iterable[_Union[_common_pb2.ObjectRef, _Mapping]]] = ..., resolution: _Optional[int] = ..., orbit_step_deg: _Optional[float] = ..., elevation_deg: _Optional[float] = ..., rings: _Optional[_Union[RingSchedule, _Mapping]] = ..., strength: _Optional[float] = ..., refine_strength: _Optional[float] = ..., fit: _Optional[_Union[_common_pb2.FitSettings, _Mapping]] = ..., seed: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., framing: _Optional[_Union[Framing, _Mapping]] = ..., force: _Optional[bool] = ..., output_formats: _Optional[_Iterable[str]] = ..., webhook: _Optional[_Union[Webhook, _Mapping]] = ...) -> None: ...

class Webhook(_message.Message):
    __slots__ = ("url",)
    URL_FIELD_NUMBER: _ClassVar[int]
    url: str
    def __init__(self, url: _Optional[str] = ...) -> None: ...

class Framing(_message.Message):
    __slots__ = ("center", "radius", "warnings", "extent")
    CENTER_FIELD_NUMBER: _ClassVar[int]
    RADIUS_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    EXTENT_FIELD_NUMBER: _ClassVar[int]
    center: _containers.RepeatedScalarFieldContainer[float]
    radius: float
    warnings: _containers.RepeatedScalarFieldContainer[str]
    extent: float
    def __init__(self, center: _Optional[_Iterable[float]] = ..., radius: _Optional[float] = ..., warnings: _Optional[_Iterable[str]] = ..., extent: _Optional[float] = ...) -> None: ...

class Warning(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: str
    def __init__(self, message: _Optional[str] = ...) -> None: ...

class RingOutput(_message.Message):
    __slots__ = ("ring", "time_step", "target_azimuths_deg", "anchor_azimuths_deg", "unobserved", "inpainted", "unobserved_fraction")
    RING_FIELD_NUMBER: _ClassVar[int]
    TIME_STEP_FIELD_NUMBER: _ClassVar[int]
    TARGET_AZIMUTHS_DEG_FIELD_NUMBER: _ClassVar[int]
    ANCHOR_AZIMUTHS_DEG_FIELD_NUMBER: _ClassVar[int]
    UNOBSERVED_FIELD_NUMBER: _ClassVar[int]
    INPAINTED_FIELD_NUMBER: _ClassVar[int]
    UNOBSERVED_FRACTION_FIELD_NUMBER: _ClassVar[int]
    ring: int
    time_step: int
    target_azimuths_deg: _containers.RepeatedScalarFieldContainer[float]
    anchor_azimuths_deg: _containers.RepeatedScalarFieldContainer[float]
    unobserved: _common_pb2.TensorRef
    inpainted: _common_pb2.TensorRef
    unobserved_fraction: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, ring: _Optional[int] = ..., time_step: _Optional[int] = ..., target_azimuths_deg: _Optional[_Iterable[float]] = ..., anchor_azimuths_deg: _Optional[_Iterable[float]] = ..., unobserved: _Optional[_Union[_common_pb2.TensorRef, _Mapping]] = ..., inpainted: _Optional[_Union[_common_pb2.TensorRef, _Mapping]] = ..., unobserved_fraction: _Optional[_Iterable[float]] = ...) -> None: ...

class JobOutputs(_message.Message):
    __slots__ = ("repaired", "rings", "contact_sheet", "turntable", "report", "change_map", "repaired_formats")
    REPAIRED_FIELD_NUMBER: _ClassVar[int]
    RINGS_FIELD_NUMBER: _ClassVar[int]
    CONTACT_SHEET_FIELD_NUMBER: _ClassVar[int]
    TURNTABLE_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    CHANGE_MAP_FIELD_NUMBER: _ClassVar[int]
    REPAIRED_FORMATS_FIELD_NUMBER: _ClassVar[int]
    repaired: _common_pb2.AssetRef
    rings: _containers.RepeatedCompositeFieldContainer[RingOutput]
    contact_sheet: _common_pb2.ObjectRef
    turntable: _common_pb2.ObjectRef
    report: _common_pb2.ObjectRef
    change_map: _common_pb2.ObjectRef
    repaired_formats: _containers.RepeatedCompositeFieldContainer[RepairedAsset]
    def __init__(self, repaired: _Optional[_Union[_common_pb2.AssetRef, _Mapping]] = ..., rings: _Optional[_Iterable[_Union[RingOutput, _Mapping]]] = ..., contact_sheet: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., turntable: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., report: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., change_map: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., repaired_formats: _Optional[_Iterable[_Union[RepairedAsset, _Mapping]]] = ...) -> None: ...

class RepairedAsset(_message.Message):
    __slots__ = ("format", "asset")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    ASSET_FIELD_NUMBER: _ClassVar[int]
    format: str
    asset: _common_pb2.AssetRef
    def __init__(self, format: _Optional[str] = ..., asset: _Optional[_Union[_common_pb2.AssetRef, _Mapping]] = ...) -> None: ...

class JobProgress(_message.Message):
    __slots__ = ("steps_done", "steps_total", "ring", "rings_total", "current_step")
    STEPS_DONE_FIELD_NUMBER: _ClassVar[int]
    STEPS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    RING_FIELD_NUMBER: _ClassVar[int]
    RINGS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    CURRENT_STEP_FIELD_NUMBER: _ClassVar[int]
    steps_done: int
    steps_total: int
    ring: int
    rings_total: int
    current_step: str
    def __init__(self, steps_done: _Optional[int] = ..., steps_total: _Optional[int] = ..., ring: _Optional[int] = ..., rings_total: _Optional[int] = ..., current_step: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "spec", "state", "progress", "outputs", "error", "created_at", "updated_at", "owner", "failure", "queue_position")
    ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_POSITION_FIELD_NUMBER: _ClassVar[int]
    id: str
    spec: JobSpec
    state: JobState
    progress: JobProgress
    outputs: JobOutputs
    error: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    owner: str
    failure: StepFailure
    queue_position: int
    def __init__(self, id: _Optional[str] = ..., spec: _Optional[_Union[JobSpec, _Mapping]] = ..., state: _Optional[_Union[JobState, str]] = ..., progress: _Optional[_Union[JobProgress, _Mapping]] = ..., outputs: _Optional[_Union[JobOutputs, _Mapping]] = ..., error: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., owner: _Optional[str] = ..., failure: _Optional[_Union[StepFailure, _Mapping]] = ..., queue_position: _Optional[int] = ...) -> None: ...

class Artifact(_message.Message):
    __slots__ = ("name", "tensor", "object")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    name: str
    tensor: _common_pb2.TensorRef
    object: _common_pb2.ObjectRef
    def __init__(self, name: _Optional[str] = ..., tensor: _Optional[_Union[_common_pb2.TensorRef, _Mapping]] = ..., object: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ...) -> None: ...

class StepStarted(_message.Message):
    __slots__ = ("step", "time_step", "model")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TIME_STEP_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    step: str
    time_step: int
    model: StageModel
    def __init__(self, step: _Optional[str] = ..., time_step: _Optional[int] = ..., model: _Optional[_Union[StageModel, _Mapping]] = ...) -> None: ...

class StageModel(_message.Message):
    __slots__ = ("stage", "backend", "model", "version")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    stage: str
    backend: str
    model: str
    version: str
    def __init__(self, stage: _Optional[str] = ..., backend: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class StageModels(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[StageModel]
    def __init__(self, models: _Optional[_Iterable[_Union[StageModel, _Mapping]]] = ...) -> None: ...

class StepFinished(_message.Message):
    __slots__ = ("step", "time_step", "seconds", "artifacts", "resumed")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TIME_STEP_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    step: str
    time_step: int
    seconds: float
    artifacts: _containers.RepeatedCompositeFieldContainer[Artifact]
    resumed: bool
    def __init__(self, step: _Optional[str] = ..., time_step: _Optional[int] = ..., seconds: _Optional[float] = ..., artifacts: _Optional[_Iterable[_Union[Artifact, _Mapping]]] = ..., resumed: _Optional[bool] = ...) -> None: ...

class RingProgress(_message.Message):
    __slots__ = ("ring", "rings_total", "targets_done", "targets_total", "unobserved_fraction")
    RING_FIELD_NUMBER: _ClassVar[int]
    RINGS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    TARGETS_DONE_FIELD_NUMBER: _ClassVar[int]
    TARGETS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    UNOBSERVED_FRACTION_FIELD_NUMBER: _ClassVar[int]
    ring: int
    rings_total: int
    targets_done: int
    targets_total: int
    unobserved_fraction: float
    def __init__(self, ring: _Optional[int] = ..., rings_total: _Optional[int] = ..., targets_done: _Optional[int] = ..., targets_total: _Optional[int] = ..., unobserved_fraction: _Optional[float] = ...) -> None: ...

class FitEvent(_message.Message):
    __slots__ = ("progress",)
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    progress: _common_pb2.FitProgress
    def __init__(self, progress: _Optional[_Union[_common_pb2.FitProgress, _Mapping]] = ...) -> None: ...

class JobFinished(_message.Message):
    __slots__ = ("state", "outputs", "error", "failure")
    STATE_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    state: JobState
    outputs: JobOutputs
    error: str
    failure: StepFailure
    def __init__(self, state: _Optional[_Union[JobState, str]] = ..., outputs: _Optional[_Union[JobOutputs, _Mapping]] = ..., error: _Optional[str] = ..., failure: _Optional[_Union[StepFailure, _Mapping]] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("job_id", "sequence", "time", "step_started", "step_finished", "ring_progress", "fit", "finished", "warning", "step_failed", "waiting", "webhook")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    STEP_STARTED_FIELD_NUMBER: _ClassVar[int]
    STEP_FINISHED_FIELD_NUMBER: _ClassVar[int]
    RING_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    FIT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    WARNING_FIELD_NUMBER: _ClassVar[int]
    STEP_FAILED_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    sequence: int
    time: _timestamp_pb2.Timestamp
    step_started: StepStarted
    step_finished: StepFinished
    ring_progress: RingProgress
    fit: FitEvent
    finished: JobFinished
    warning: Warning
    step_failed: StepFailure
    waiting: Waiting
    webhook: WebhookDelivery
    def __init__(self, job_id: _Optional[str] = ..., sequence: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., step_started: _Optional[_Union[StepStarted, _Mapping]] = ..., step_finished: _Optional[_Union[StepFinished, _Mapping]] = ..., ring_progress: _Optional[_Union[RingProgress, _Mapping]] = ..., fit: _Optional[_Union[FitEvent, _Mapping]] = ..., finished: _Optional[_Union[JobFinished, _Mapping]] = ..., warning: _Optional[_Union[Warning, _Mapping]] = ..., step_failed: _Optional[_Union[StepFailure, _Mapping]] = ..., waiting: _Optional[_Union[Waiting, _Mapping]] = ..., webhook: _Optional[_Union[WebhookDelivery, _Mapping]] = ...) -> None: ...

class WebhookDelivery(_message.Message):
    __slots__ = ("type", "webhook_id", "attempt", "status_code", "error", "delivered", "retry_in_s")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    STATUS_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    RETRY_IN_S_FIELD_NUMBER: _ClassVar[int]
    type: str
    webhook_id: str
    attempt: int
    status_code: int
    error: str
    delivered: bool
    retry_in_s: float
    def __init__(self, type: _Optional[str] = ..., webhook_id: _Optional[str] = ..., attempt: _Optional[int] = ..., status_code: _Optional[int] = ..., error: _Optional[str] = ..., delivered: _Optional[bool] = ..., retry_in_s: _Optional[float] = ...) -> None: ...

class StepFailure(_message.Message):
    __slots__ = ("step", "time_step", "code", "message", "reason", "field_violations")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TIME_STEP_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FIELD_VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    step: str
    time_step: int
    code: str
    message: str
    reason: str
    field_violations: _containers.RepeatedCompositeFieldContainer[FieldViolation]
    def __init__(self, step: _Optional[str] = ..., time_step: _Optional[int] = ..., code: _Optional[str] = ..., message: _Optional[str] = ..., reason: _Optional[str] = ..., field_violations: _Optional[_Iterable[_Union[FieldViolation, _Mapping]]] = ...) -> None: ...

class FieldViolation(_message.Message):
    __slots__ = ("field", "description")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    field: str
    description: str
    def __init__(self, field: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class Waiting(_message.Message):
    __slots__ = ("step", "retry_in_s")
    STEP_FIELD_NUMBER: _ClassVar[int]
    RETRY_IN_S_FIELD_NUMBER: _ClassVar[int]
    step: str
    retry_in_s: float
    def __init__(self, step: _Optional[str] = ..., retry_in_s: _Optional[float] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("spec", "request_id")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    spec: JobSpec
    request_id: str
    def __init__(self, spec: _Optional[_Union[JobSpec, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class SubmitJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id", "after_sequence", "queue_positions")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after_sequence: int
    queue_positions: bool
    def __init__(self, job_id: _Optional[str] = ..., after_sequence: _Optional[int] = ..., queue_positions: _Optional[bool] = ...) -> None: ...

class WatchJobResponse(_message.Message):
    __slots__ = ("event", "queue_position")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    QUEUE_POSITION_FIELD_NUMBER: _ClassVar[int]
    event: JobEvent
    queue_position: int
    def __init__(self, event: _Optional[_Union[JobEvent, _Mapping]] = ..., queue_position: _Optional[int] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "state")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    state: JobState
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class DeleteJobResponse(_message.Message):
    __slots__ = ("objects_released",)
    OBJECTS_RELEASED_FIELD_NUMBER: _ClassVar[int]
    objects_released: int
    def __init__(self, objects_released: _Optional[int] = ...) -> None: ...

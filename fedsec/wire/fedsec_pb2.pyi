from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_STATUS_UNSPECIFIED: _ClassVar[TaskStatus]
    TASK_STATUS_TASK: _ClassVar[TaskStatus]
    TASK_STATUS_WAIT: _ClassVar[TaskStatus]
    TASK_STATUS_DONE: _ClassVar[TaskStatus]

class JobOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_OUTCOME_UNSPECIFIED: _ClassVar[JobOutcome]
    JOB_OUTCOME_FINISHED: _ClassVar[JobOutcome]
    JOB_OUTCOME_FAILED: _ClassVar[JobOutcome]
TASK_STATUS_UNSPECIFIED: TaskStatus
TASK_STATUS_TASK: TaskStatus
TASK_STATUS_WAIT: TaskStatus
TASK_STATUS_DONE: TaskStatus
JOB_OUTCOME_UNSPECIFIED: JobOutcome
JOB_OUTCOME_FINISHED: JobOutcome
JOB_OUTCOME_FAILED: JobOutcome

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class JobRef(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class PayloadInfo(_message.Message):
    __slots__ = ("total_size", "sha256")
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    total_size: int
    sha256: bytes
    def __init__(self, total_size: _Optional[int] = ..., sha256: _Optional[bytes] = ...) -> None: ...

class JobSignature(_message.Message):
    __slots__ = ("signature", "signer_cert", "job_id", "submit_time")
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SIGNER_CERT_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SUBMIT_TIME_FIELD_NUMBER: _ClassVar[int]
    signature: bytes
    signer_cert: bytes
    job_id: str
    submit_time: int
    def __init__(self, signature: _Optional[bytes] = ..., signer_cert: _Optional[bytes] = ..., job_id: _Optional[str] = ..., submit_time: _Optional[int] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("fedsec_version", "sys_info_json")
    FEDSEC_VERSION_FIELD_NUMBER: _ClassVar[int]
    SYS_INFO_JSON_FIELD_NUMBER: _ClassVar[int]
    fedsec_version: str
    sys_info_json: str
    def __init__(self, fedsec_version: _Optional[str] = ..., sys_info_json: _Optional[str] = ...) -> None: ...

class RegisterReply(_message.Message):
    __slots__ = ("server_name", "project", "heartbeat_interval")
    SERVER_NAME_FIELD_NUMBER: _ClassVar[int]
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    server_name: str
    project: str
    heartbeat_interval: float
    def __init__(self, server_name: _Optional[str] = ..., project: _Optional[str] = ..., heartbeat_interval: _Optional[float] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("running_jobs", "known_version")
    RUNNING_JOBS_FIELD_NUMBER: _ClassVar[int]
    KNOWN_VERSION_FIELD_NUMBER: _ClassVar[int]
    running_jobs: _containers.RepeatedScalarFieldContainer[str]
    known_version: int
    def __init__(self, running_jobs: _Optional[_Iterable[str]] = ..., known_version: _Optional[int] = ...) -> None: ...

class JobAssignment(_message.Message):
    __slots__ = ("job_id", "name")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    name: str
    def __init__(self, job_id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("jobs", "version", "shutdown")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHUTDOWN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobAssignment]
    version: int
    shutdown: bool
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobAssignment, _Mapping]]] = ..., version: _Optional[int] = ..., shutdown: _Optional[bool] = ...) -> None: ...

class FetchJobRequest(_message.Message):
    __slots__ = ("job_id", "offset")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    offset: int
    def __init__(self, job_id: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class ArchivePart(_message.Message):
    __slots__ = ("info", "data", "signature")
    INFO_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    info: PayloadInfo
    data: bytes
    signature: JobSignature
    def __init__(self, info: _Optional[_Union[PayloadInfo, _Mapping]] = ..., data: _Optional[bytes] = ..., signature: _Optional[_Union[JobSignature, _Mapping]] = ...) -> None: ...

class TaskRequest(_message.Message):
    __slots__ = ("job_id", "site", "wait_seconds", "held_sha256")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    HELD_SHA256_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    site: str
    wait_seconds: float
    held_sha256: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, job_id: _Optional[str] = ..., site: _Optional[str] = ..., wait_seconds: _Optional[float] = ..., held_sha256: _Optional[_Iterable[bytes]] = ...) -> None: ...

class TaskHeader(_message.Message):
    __slots__ = ("status", "task", "current_round", "num_rounds", "meta_json", "payload", "model_held")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    CURRENT_ROUND_FIELD_NUMBER: _ClassVar[int]
    NUM_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    META_JSON_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    MODEL_HELD_FIELD_NUMBER: _ClassVar[int]
    status: TaskStatus
    task: str
    current_round: int
    num_rounds: int
    meta_json: str
    payload: PayloadInfo
    model_held: bool
    def __init__(self, status: _Optional[_Union[TaskStatus, str]] = ..., task: _Optional[str] = ..., current_round: _Optional[int] = ..., num_rounds: _Optional[int] = ..., meta_json: _Optional[str] = ..., payload: _Optional[_Union[PayloadInfo, _Mapping]] = ..., model_held: _Optional[bool] = ...) -> None: ...

class TaskPart(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: TaskHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[TaskHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ResultHeader(_message.Message):
    __slots__ = ("job_id", "site", "current_round", "task", "metrics", "meta_json", "payload", "payload_trailer")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_ROUND_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    META_JSON_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_TRAILER_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    site: str
    current_round: int
    task: str
    metrics: _containers.ScalarMap[str, float]
    meta_json: str
    payload: PayloadInfo
    payload_trailer: bool
    def __init__(self, job_id: _Optional[str] = ..., site: _Optional[str] = ..., current_round: _Optional[int] = ..., task: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., meta_json: _Optional[str] = ..., payload: _Optional[_Union[PayloadInfo, _Mapping]] = ..., payload_trailer: _Optional[bool] = ...) -> None: ...

class ResultPart(_message.Message):
    __slots__ = ("header", "data", "trailer")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TRAILER_FIELD_NUMBER: _ClassVar[int]
    header: ResultHeader
    data: bytes
    trailer: PayloadInfo
    def __init__(self, header: _Optional[_Union[ResultHeader, _Mapping]] = ..., data: _Optional[bytes] = ..., trailer: _Optional[_Union[PayloadInfo, _Mapping]] = ...) -> None: ...

class ResultReply(_message.Message):
    __slots__ = ("accepted", "reason")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    reason: str
    def __init__(self, accepted: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class JobReport(_message.Message):
    __slots__ = ("job_id", "outcome", "error", "log_tail")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LOG_TAIL_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    outcome: JobOutcome
    error: str
    log_tail: str
    def __init__(self, job_id: _Optional[str] = ..., outcome: _Optional[_Union[JobOutcome, str]] = ..., error: _Optional[str] = ..., log_tail: _Optional[str] = ...) -> None: ...

class JobLogChunk(_message.Message):
    __slots__ = ("job_id", "run", "offset", "data", "last")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    run: str
    offset: int
    data: bytes
    last: bool
    def __init__(self, job_id: _Optional[str] = ..., run: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., last: _Optional[bool] = ...) -> None: ...

class JobLogAck(_message.Message):
    __slots__ = ("offset", "full")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    FULL_FIELD_NUMBER: _ClassVar[int]
    offset: int
    full: bool
    def __init__(self, offset: _Optional[int] = ..., full: _Optional[bool] = ...) -> None: ...

class TrackingEvent(_message.Message):
    __slots__ = ("writer", "seq", "kind", "tag", "step", "wall_time", "value", "text")
    WRITER_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    WALL_TIME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    writer: str
    seq: int
    kind: str
    tag: str
    step: int
    wall_time: float
    value: float
    text: str
    def __init__(self, writer: _Optional[str] = ..., seq: _Optional[int] = ..., kind: _Optional[str] = ..., tag: _Optional[str] = ..., step: _Optional[int] = ..., wall_time: _Optional[float] = ..., value: _Optional[float] = ..., text: _Optional[str] = ...) -> None: ...

class EventBatch(_message.Message):
    __slots__ = ("job_id", "site", "events")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    site: str
    events: _containers.RepeatedCompositeFieldContainer[TrackingEvent]
    def __init__(self, job_id: _Optional[str] = ..., site: _Optional[str] = ..., events: _Optional[_Iterable[_Union[TrackingEvent, _Mapping]]] = ...) -> None: ...

class EventAck(_message.Message):
    __slots__ = ("stored", "duplicates")
    STORED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    stored: int
    duplicates: int
    def __init__(self, stored: _Optional[int] = ..., duplicates: _Optional[int] = ...) -> None: ...

class SiteLeft(_message.Message):
    __slots__ = ("site", "reason")
    SITE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    site: str
    reason: str
    def __init__(self, site: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ParticipationState(_message.Message):
    __slots__ = ("fetched", "failures", "left")
    class FailuresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    FETCHED_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    LEFT_FIELD_NUMBER: _ClassVar[int]
    fetched: _containers.RepeatedScalarFieldContainer[str]
    failures: _containers.ScalarMap[str, int]
    left: _containers.RepeatedCompositeFieldContainer[SiteLeft]
    def __init__(self, fetched: _Optional[_Iterable[str]] = ..., failures: _Optional[_Mapping[str, int]] = ..., left: _Optional[_Iterable[_Union[SiteLeft, _Mapping]]] = ...) -> None: ...

class SiteList(_message.Message):
    __slots__ = ("sites", "participation", "reported")
    SITES_FIELD_NUMBER: _ClassVar[int]
    PARTICIPATION_FIELD_NUMBER: _ClassVar[int]
    REPORTED_FIELD_NUMBER: _ClassVar[int]
    sites: _containers.RepeatedScalarFieldContainer[str]
    participation: ParticipationState
    reported: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sites: _Optional[_Iterable[str]] = ..., participation: _Optional[_Union[ParticipationState, _Mapping]] = ..., reported: _Optional[_Iterable[str]] = ...) -> None: ...

class RoundState(_message.Message):
    __slots__ = ("number", "kind", "sampled", "accepted", "refused", "failed", "metrics")
    class RefusedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SAMPLED_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    number: int
    kind: str
    sampled: _containers.RepeatedScalarFieldContainer[str]
    accepted: _containers.RepeatedScalarFieldContainer[str]
    refused: _containers.ScalarMap[str, str]
    failed: _containers.RepeatedScalarFieldContainer[str]
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, number: _Optional[int] = ..., kind: _Optional[str] = ..., sampled: _Optional[_Iterable[str]] = ..., accepted: _Optional[_Iterable[str]] = ..., refused: _Optional[_Mapping[str, str]] = ..., failed: _Optional[_Iterable[str]] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class RefusalState(_message.Message):
    __slots__ = ("round", "site", "reason")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    round: int
    site: str
    reason: str
    def __init__(self, round: _Optional[int] = ..., site: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class KeptModel(_message.Message):
    __slots__ = ("model", "round")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    model: str
    round: int
    def __init__(self, model: _Optional[str] = ..., round: _Optional[int] = ...) -> None: ...

class WorkflowOutcome(_message.Message):
    __slots__ = ("completed", "reason", "kept")
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    KEPT_FIELD_NUMBER: _ClassVar[int]
    completed: bool
    reason: str
    kept: KeptModel
    def __init__(self, completed: _Optional[bool] = ..., reason: _Optional[str] = ..., kept: _Optional[_Union[KeptModel, _Mapping]] = ...) -> None: ...

class JobStart(_message.Message):
    __slots__ = ("completed_rounds", "counted", "refusals", "participation", "final")
    COMPLETED_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    COUNTED_FIELD_NUMBER: _ClassVar[int]
    REFUSALS_FIELD_NUMBER: _ClassVar[int]
    PARTICIPATION_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    completed_rounds: int
    counted: _containers.RepeatedScalarFieldContainer[str]
    refusals: _containers.RepeatedCompositeFieldContainer[RefusalState]
    participation: ParticipationState
    final: RoundState
    def __init__(self, completed_rounds: _Optional[int] = ..., counted: _Optional[_Iterable[str]] = ..., refusals: _Optional[_Iterable[_Union[RefusalState, _Mapping]]] = ..., participation: _Optional[_Union[ParticipationState, _Mapping]] = ..., final: _Optional[_Union[RoundState, _Mapping]] = ...) -> None: ...

class StateReport(_message.Message):
    __slots__ = ("seq", "round", "refusal", "outcome", "completed_rounds")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    round: RoundState
    refusal: RefusalState
    outcome: WorkflowOutcome
    completed_rounds: int
    def __init__(self, seq: _Optional[int] = ..., round: _Optional[_Union[RoundState, _Mapping]] = ..., refusal: _Optional[_Union[RefusalState, _Mapping]] = ..., outcome: _Optional[_Union[WorkflowOutcome, _Mapping]] = ..., completed_rounds: _Optional[int] = ...) -> None: ...

class StatePull(_message.Message):
    __slots__ = ("acked", "wait_seconds")
    ACKED_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    acked: int
    wait_seconds: float
    def __init__(self, acked: _Optional[int] = ..., wait_seconds: _Optional[float] = ...) -> None: ...

class StateReports(_message.Message):
    __slots__ = ("reports",)
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    reports: _containers.RepeatedCompositeFieldContainer[StateReport]
    def __init__(self, reports: _Optional[_Iterable[_Union[StateReport, _Mapping]]] = ...) -> None: ...

class JobInfo(_message.Message):
    __slots__ = ("job_id", "name", "status", "submitter", "submitter_org", "submitter_role", "submit_time", "start_time", "end_time", "reason", "current_round", "num_rounds", "meta_json", "progress_json")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SUBMITTER_FIELD_NUMBER: _ClassVar[int]
    SUBMITTER_ORG_FIELD_NUMBER: _ClassVar[int]
    SUBMITTER_ROLE_FIELD_NUMBER: _ClassVar[int]
    SUBMIT_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CURRENT_ROUND_FIELD_NUMBER: _ClassVar[int]
    NUM_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    META_JSON_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_JSON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    name: str
    status: str
    submitter: str
    submitter_org: str
    submitter_role: str
    submit_time: float
    start_time: float
    end_time: float
    reason: str
    current_round: int
    num_rounds: int
    meta_json: str
    progress_json: str
    def __init__(self, job_id: _Optional[str] = ..., name: _Optional[str] = ..., status: _Optional[str] = ..., submitter: _Optional[str] = ..., submitter_org: _Optional[str] = ..., submitter_role: _Optional[str] = ..., submit_time: _Optional[float] = ..., start_time: _Optional[float] = ..., end_time: _Optional[float] = ..., reason: _Optional[str] = ..., current_round: _Optional[int] = ..., num_rounds: _Optional[int] = ..., meta_json: _Optional[str] = ..., progress_json: _Optional[str] = ...) -> None: ...

class CloneRequest(_message.Message):
    __slots__ = ("job_id", "signature")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    signature: JobSignature
    def __init__(self, job_id: _Optional[str] = ..., signature: _Optional[_Union[JobSignature, _Mapping]] = ...) -> None: ...

class JobArchiveInfo(_message.Message):
    __slots__ = ("job_id", "archive_sha256", "signature")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ARCHIVE_SHA256_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    archive_sha256: bytes
    signature: JobSignature
    def __init__(self, job_id: _Optional[str] = ..., archive_sha256: _Optional[bytes] = ..., signature: _Optional[_Union[JobSignature, _Mapping]] = ...) -> None: ...

class SubmitPart(_message.Message):
    __slots__ = ("info", "data", "signature")
    INFO_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    info: PayloadInfo
    data: bytes
    signature: JobSignature
    def __init__(self, info: _Optional[_Union[PayloadInfo, _Mapping]] = ..., data: _Optional[bytes] = ..., signature: _Optional[_Union[JobSignature, _Mapping]] = ...) -> None: ...

class ChallengeReply(_message.Message):
    __slots__ = ("nonce", "expires_in")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    expires_in: float
    def __init__(self, nonce: _Optional[bytes] = ..., expires_in: _Optional[float] = ...) -> None: ...

class LoginRequest(_message.Message):
    __slots__ = ("nonce", "signature")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    signature: bytes
    def __init__(self, nonce: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class LoginReply(_message.Message):
    __slots__ = ("token", "idle_timeout", "admin", "role")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    ADMIN_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    token: str
    idle_timeout: float
    admin: str
    role: str
    def __init__(self, token: _Optional[str] = ..., idle_timeout: _Optional[float] = ..., admin: _Optional[str] = ..., role: _Optional[str] = ...) -> None: ...

class SiteRef(_message.Message):
    __slots__ = ("site",)
    SITE_FIELD_NUMBER: _ClassVar[int]
    site: str
    def __init__(self, site: _Optional[str] = ...) -> None: ...

class TargetRequest(_message.Message):
    __slots__ = ("target", "sites", "job_id", "max_results")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    SITES_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_RESULTS_FIELD_NUMBER: _ClassVar[int]
    target: str
    sites: _containers.RepeatedScalarFieldContainer[str]
    job_id: str
    max_results: int
    def __init__(self, target: _Optional[str] = ..., sites: _Optional[_Iterable[str]] = ..., job_id: _Optional[str] = ..., max_results: _Optional[int] = ...) -> None: ...

class LogCursor(_message.Message):
    __slots__ = ("site", "offset")
    SITE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    site: str
    offset: int
    def __init__(self, site: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class LogTailRequest(_message.Message):
    __slots__ = ("job_id", "site", "cursors", "from_start", "again")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    CURSORS_FIELD_NUMBER: _ClassVar[int]
    FROM_START_FIELD_NUMBER: _ClassVar[int]
    AGAIN_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    site: str
    cursors: _containers.RepeatedCompositeFieldContainer[LogCursor]
    from_start: bool
    again: bool
    def __init__(self, job_id: _Optional[str] = ..., site: _Optional[str] = ..., cursors: _Optional[_Iterable[_Union[LogCursor, _Mapping]]] = ..., from_start: _Optional[bool] = ..., again: _Optional[bool] = ...) -> None: ...

class LogText(_message.Message):
    __slots__ = ("site", "offset", "text", "more", "closed", "full")
    SITE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    FULL_FIELD_NUMBER: _ClassVar[int]
    site: str
    offset: int
    text: str
    more: bool
    closed: bool
    full: bool
    def __init__(self, site: _Optional[str] = ..., offset: _Optional[int] = ..., text: _Optional[str] = ..., more: _Optional[bool] = ..., closed: _Optional[bool] = ..., full: _Optional[bool] = ...) -> None: ...

class LogTail(_message.Message):
    __slots__ = ("logs", "status")
    LOGS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    logs: _containers.RepeatedCompositeFieldContainer[LogText]
    status: str
    def __init__(self, logs: _Optional[_Iterable[_Union[LogText, _Mapping]]] = ..., status: _Optional[str] = ...) -> None: ...

class TextReply(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("name_prefix", "id_prefix", "max_results")
    NAME_PREFIX_FIELD_NUMBER: _ClassVar[int]
    ID_PREFIX_FIELD_NUMBER: _ClassVar[int]
    MAX_RESULTS_FIELD_NUMBER: _ClassVar[int]
    name_prefix: str
    id_prefix: str
    max_results: int
    def __init__(self, name_prefix: _Optional[str] = ..., id_prefix: _Optional[str] = ..., max_results: _Optional[int] = ...) -> None: ...

class JobList(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobInfo]
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobInfo, _Mapping]]] = ...) -> None: ...

from tether.v1 import infer_pb2 as _infer_pb2
from tether.v1 import status_pb2 as _status_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_RESERVED: _ClassVar[JobState]
    JOB_STATE_DISPATCHED: _ClassVar[JobState]
    JOB_STATE_STREAMING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_RESERVED: JobState
JOB_STATE_DISPATCHED: JobState
JOB_STATE_STREAMING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState

class JobStatus(_message.Message):
    __slots__ = ("correlation_id", "retry_token", "state", "worker_id", "attempts", "error", "usage", "created_unix_ms", "updated_unix_ms")
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    RETRY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    correlation_id: str
    retry_token: str
    state: JobState
    worker_id: str
    attempts: int
    error: _status_pb2.Error
    usage: _infer_pb2.Usage
    created_unix_ms: int
    updated_unix_ms: int
    def __init__(self, correlation_id: _Optional[str] = ..., retry_token: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., worker_id: _Optional[str] = ..., attempts: _Optional[int] = ..., error: _Optional[_Union[_status_pb2.Error, _Mapping]] = ..., usage: _Optional[_Union[_infer_pb2.Usage, _Mapping]] = ..., created_unix_ms: _Optional[int] = ..., updated_unix_ms: _Optional[int] = ...) -> None: ...

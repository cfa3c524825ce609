from tether.v1 import presence_pb2 as _presence_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ControlMessage(_message.Message):
    __slots__ = ("region", "id", "drain", "rollout")
    REGION_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    region: str
    id: int
    drain: Drain
    rollout: Rollout
    def __init__(self, region: _Optional[str] = ..., id: _Optional[int] = ..., drain: _Optional[_Union[Drain, _Mapping]] = ..., rollout: _Optional[_Union[Rollout, _Mapping]] = ...) -> None: ...

class Drain(_message.Message):
    __slots__ = ("worker_ids", "grace_ms")
    WORKER_IDS_FIELD_NUMBER: _ClassVar[int]
    GRACE_MS_FIELD_NUMBER: _ClassVar[int]
    worker_ids: _containers.RepeatedScalarFieldContainer[str]
    grace_ms: int
    def __init__(self, worker_ids: _Optional[_Iterable[str]] = ..., grace_ms: _Optional[int] = ...) -> None: ...

class Rollout(_message.Message):
    __slots__ = ("model_id", "weights", "max_error_rate")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    MAX_ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    weights: _containers.RepeatedCompositeFieldContainer[CanaryWeight]
    max_error_rate: float
    def __init__(self, model_id: _Optional[str] = ..., weights: _Optional[_Iterable[_Union[CanaryWeight, _Mapping]]] = ..., max_error_rate: _Optional[float] = ...) -> None: ...

class CanaryWeight(_message.Message):
    __slots__ = ("model", "weight_bps")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_BPS_FIELD_NUMBER: _ClassVar[int]
    model: _presence_pb2.ModelKey
    weight_bps: int
    def __init__(self, model: _Optional[_Union[_presence_pb2.ModelKey, _Mapping]] = ..., weight_bps: _Optional[int] = ...) -> None: ...

class ControlAck(_message.Message):
    __slots__ = ("id", "accepted", "message")
    ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    id: int
    accepted: bool
    message: str
    def __init__(self, id: _Optional[int] = ..., accepted: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

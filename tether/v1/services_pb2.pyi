from tether.v1 import control_pb2 as _control_pb2
from tether.v1 import health_pb2 as _health_pb2
from tether.v1 import infer_pb2 as _infer_pb2
from tether.v1 import jobs_pb2 as _jobs_pb2
from tether.v1 import presence_pb2 as _presence_pb2
from tether.v1 import registry_pb2 as _registry_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListModelsRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[_registry_pb2.ModelRecord]
    def __init__(self, models: _Optional[_Iterable[_Union[_registry_pb2.ModelRecord, _Mapping]]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("correlation_id", "retry_token")
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    RETRY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    correlation_id: str
    retry_token: str
    def __init__(self, correlation_id: _Optional[str] = ..., retry_token: _Optional[str] = ...) -> None: ...

class GetFleetRequest(_message.Message):
    __slots__ = ("region",)
    REGION_FIELD_NUMBER: _ClassVar[int]
    region: str
    def __init__(self, region: _Optional[str] = ...) -> None: ...

class GetFleetResponse(_message.Message):
    __slots__ = ("workers", "breakers", "rollouts", "recent_requests", "recent_failures", "recent_window_s", "registries", "orchestrator_key")
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    BREAKERS_FIELD_NUMBER: _ClassVar[int]
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    RECENT_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    RECENT_FAILURES_FIELD_NUMBER: _ClassVar[int]
    RECENT_WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    REGISTRIES_FIELD_NUMBER: _ClassVar[int]
    ORCHESTRATOR_KEY_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[_presence_pb2.Presence]
    breakers: _containers.RepeatedCompositeFieldContainer[FleetBreaker]
    rollouts: _containers.RepeatedCompositeFieldContainer[FleetRollout]
    recent_requests: int
    recent_failures: int
    recent_window_s: int
    registries: int
    orchestrator_key: bytes
    def __init__(self, workers: _Optional[_Iterable[_Union[_presence_pb2.Presence, _Mapping]]] = ..., breakers: _Optional[_Iterable[_Union[FleetBreaker, _Mapping]]] = ..., rollouts: _Optional[_Iterable[_Union[FleetRollout, _Mapping]]] = ..., recent_requests: _Optional[int] = ..., recent_failures: _Optional[int] = ..., recent_window_s: _Optional[int] = ..., registries: _Optional[int] = ..., orchestrator_key: _Optional[bytes] = ...) -> None: ...

class FleetBreaker(_message.Message):
    __slots__ = ("model_id", "version", "region", "state", "reason")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    version: str
    region: str
    state: str
    reason: str
    def __init__(self, model_id: _Optional[str] = ..., version: _Optional[str] = ..., region: _Optional[str] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class FleetRollout(_message.Message):
    __slots__ = ("model_id", "summary")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    summary: str
    def __init__(self, model_id: _Optional[str] = ..., summary: _Optional[str] = ...) -> None: ...

class GetHealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchPresenceRequest(_message.Message):
    __slots__ = ("interval_ms",)
    INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    interval_ms: int
    def __init__(self, interval_ms: _Optional[int] = ...) -> None: ...

class ResolveRequest(_message.Message):
    __slots__ = ("model_id", "version", "tenant_id")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    version: str
    tenant_id: str
    def __init__(self, model_id: _Optional[str] = ..., version: _Optional[str] = ..., tenant_id: _Optional[str] = ...) -> None: ...

class PlaceRequest(_message.Message):
    __slots__ = ("tenant_id", "model_id", "version", "region", "correlation_id")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    model_id: str
    version: str
    region: str
    correlation_id: str
    def __init__(self, tenant_id: _Optional[str] = ..., model_id: _Optional[str] = ..., version: _Optional[str] = ..., region: _Optional[str] = ..., correlation_id: _Optional[str] = ...) -> None: ...

class PlaceResponse(_message.Message):
    __slots__ = ("tenant_id", "workers")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    workers: _containers.RepeatedCompositeFieldContainer[PlacedWorker]
    def __init__(self, tenant_id: _Optional[str] = ..., workers: _Optional[_Iterable[_Union[PlacedWorker, _Mapping]]] = ...) -> None: ...

class PlacedWorker(_message.Message):
    __slots__ = ("worker_id", "pub_key")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    PUB_KEY_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    pub_key: bytes
    def __init__(self, worker_id: _Optional[str] = ..., pub_key: _Optional[bytes] = ...) -> None: ...

from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Capacity(_message.Message):
    __slots__ = ("slots", "in_use", "queue_depth", "queue_limit", "max_batch_size", "active_sequences", "kv_cache_budget_bytes", "kv_cache_used_bytes")
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    IN_USE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    QUEUE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_BUDGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    slots: int
    in_use: int
    queue_depth: int
    queue_limit: int
    max_batch_size: int
    active_sequences: int
    kv_cache_budget_bytes: int
    kv_cache_used_bytes: int
    def __init__(self, slots: _Optional[int] = ..., in_use: _Optional[int] = ..., queue_depth: _Optional[int] = ..., queue_limit: _Optional[int] = ..., max_batch_size: _Optional[int] = ..., active_sequences: _Optional[int] = ..., kv_cache_budget_bytes: _Optional[int] = ..., kv_cache_used_bytes: _Optional[int] = ...) -> None: ...

class CachedModel(_message.Message):
    __slots__ = ("model_id", "version", "digest", "size_bytes", "pinned", "engine", "last_used_unix_ms")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    version: str
    digest: str
    size_bytes: int
    pinned: bool
    engine: str
    last_used_unix_ms: int
    def __init__(self, model_id: _Optional[str] = ..., version: _Optional[str] = ..., digest: _Optional[str] = ..., size_bytes: _Optional[int] = ..., pinned: _Optional[bool] = ..., engine: _Optional[str] = ..., last_used_unix_ms: _Optional[int] = ...) -> None: ...

class Health(_message.Message):
    __slots__ = ()
    class Report(_message.Message):
        __slots__ = ("worker_id", "capacity", "gpu_class", "model_cache", "draining")
        WORKER_ID_FIELD_NUMBER: _ClassVar[int]
        CAPACITY_FIELD_NUMBER: _ClassVar[int]
        GPU_CLASS_FIELD_NUMBER: _ClassVar[int]
        MODEL_CACHE_FIELD_NUMBER: _ClassVar[int]
        DRAINING_FIELD_NUMBER: _ClassVar[int]
        worker_id: str
        capacity: Capacity
        gpu_class: str
        model_cache: _containers.RepeatedCompositeFieldContainer[CachedModel]
        draining: bool
        def __init__(self, worker_id: _Optional[str] = ..., capacity: _Optional[_Union[Capacity, _Mapping]] = ..., gpu_class: _Optional[str] = ..., model_cache: _Optional[_Iterable[_Union[CachedModel, _Mapping]]] = ..., draining: _Optional[bool] = ...) -> None: ...
    def __init__(self) -> None: ...

from tether.v1 import health_pb2 as _health_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelKey(_message.Message):
    __slots__ = ("model_id", "version")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    version: str
    def __init__(self, model_id: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class Presence(_message.Message):
    __slots__ = ("worker_id", "pub_key", "region", "gpu_class", "vram_gb", "accelerators", "capacity", "supported", "latency_hops", "health", "draining")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    PUB_KEY_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    GPU_CLASS_FIELD_NUMBER: _ClassVar[int]
    VRAM_GB_FIELD_NUMBER: _ClassVar[int]
    ACCELERATORS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    SUPPORTED_FIELD_NUMBER: _ClassVar[int]
    LATENCY_HOPS_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    pub_key: bytes
    region: str
    gpu_class: str
    vram_gb: int
    accelerators: _containers.RepeatedScalarFieldContainer[str]
    capacity: _health_pb2.Capacity
    supported: _containers.RepeatedCompositeFieldContainer[ModelKey]
    latency_hops: int
    health: _health_pb2.Health.Report
    draining: bool
    def __init__(self, worker_id: _Optional[str] = ..., pub_key: _Optional[bytes] = ..., region: _Optional[str] = ..., gpu_class: _Optional[str] = ..., vram_gb: _Optional[int] = ..., accelerators: _Optional[_Iterable[str]] = ..., capacity: _Optional[_Union[_health_pb2.Capacity, _Mapping]] = ..., supported: _Optional[_Iterable[_Union[ModelKey, _Mapping]]] = ..., latency_hops: _Optional[int] = ..., health: _Optional[_Union[_health_pb2.Health.Report, _Mapping]] = ..., draining: _Optional[bool] = ...) -> None: ...

class ModelAnnouncement(_message.Message):
    __slots__ = ("worker_id", "pub_key", "model", "region", "warm", "engine")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    PUB_KEY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    WARM_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    pub_key: bytes
    model: ModelKey
    region: str
    warm: bool
    engine: str
    def __init__(self, worker_id: _Optional[str] = ..., pub_key: _Optional[bytes] = ..., model: _Optional[_Union[ModelKey, _Mapping]] = ..., region: _Optional[str] = ..., warm: _Optional[bool] = ..., engine: _Optional[str] = ...) -> None: ...

class SignedEnvelope(_message.Message):
    __slots__ = ("payload_type", "payload", "signer_key", "nonce", "issued_at_unix_ms", "signature")
    PAYLOAD_TYPE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SIGNER_KEY_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    payload_type: str
    payload: bytes
    signer_key: bytes
    nonce: bytes
    issued_at_unix_ms: int
    signature: bytes
    def __init__(self, payload_type: _Optional[str] = ..., payload: _Optional[bytes] = ..., signer_key: _Optional[bytes] = ..., nonce: _Optional[bytes] = ..., issued_at_unix_ms: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

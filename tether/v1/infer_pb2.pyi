from tether.v1 import status_pb2 as _status_pb2
from tether.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_LENGTH: FinishReason

class Infer(_message.Message):
    __slots__ = ()
    class Request(_message.Message):
        __slots__ = ("tenant_id", "model_id", "version", "input", "correlation_id", "retry_token", "trace_id", "params", "region", "sealed", "timing")
        TENANT_ID_FIELD_NUMBER: _ClassVar[int]
        MODEL_ID_FIELD_NUMBER: _ClassVar[int]
        VERSION_FIELD_NUMBER: _ClassVar[int]
        INPUT_FIELD_NUMBER: _ClassVar[int]
        CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
        RETRY_TOKEN_FIELD_NUMBER: _ClassVar[int]
        TRACE_ID_FIELD_NUMBER: _ClassVar[int]
        PARAMS_FIELD_NUMBER: _ClassVar[int]
        REGION_FIELD_NUMBER: _ClassVar[int]
        SEALED_FIELD_NUMBER: _ClassVar[int]
        TIMING_FIELD_NUMBER: _ClassVar[int]
        tenant_id: str
        model_id: str
        version: str
        input: Input
        correlation_id: str
        retry_token: str
        trace_id: str
        params: GenerationParams
        region: str
        sealed: Sealed
        timing: bool
        def __init__(self, tenant_id: _Optional[str] = ..., model_id: _Optional[str] = ..., version: _Optional[str] = ..., input: _Optional[_Union[Input, _Mapping]] = ..., correlation_id: _Optional[str] = ..., retry_token: _Optional[str] = ..., trace_id: _Optional[str] = ..., params: _Optional[_Union[GenerationParams, _Mapping]] = ..., region: _Optional[str] = ..., sealed: _Optional[_Union[Sealed, _Mapping]] = ..., timing: _Optional[bool] = ...) -> None: ...
    class Chunk(_message.Message):
        __slots__ = ("correlation_id", "seq", "payload", "done", "usage", "error", "worker_id", "sealed_payload", "finish_reason", "degraded_from", "served_model", "timing")
        CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
        SEQ_FIELD_NUMBER: _ClassVar[int]
        PAYLOAD_FIELD_NUMBER: _ClassVar[int]
        DONE_FIELD_NUMBER: _ClassVar[int]
        USAGE_FIELD_NUMBER: _ClassVar[int]
        ERROR_FIELD_NUMBER: _ClassVar[int]
        WORKER_ID_FIELD_NUMBER: _ClassVar[int]
        SEALED_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
        FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
        DEGRADED_FROM_FIELD_NUMBER: _ClassVar[int]
        SERVED_MODEL_FIELD_NUMBER: _ClassVar[int]
        TIMING_FIELD_NUMBER: _ClassVar[int]
        correlation_id: str
        seq: int
        payload: Payload
        done: bool
        usage: Usage
        error: _status_pb2.Error
        worker_id: str
        sealed_payload: bytes
        finish_reason: FinishReason
        degraded_from: str
        served_model: str
        timing: Timing
        def __init__(self, correlation_id: _Optional[str] = ..., seq: _Optional[int] = ..., payload: _Optional[_Union[Payload, _Mapping]] = ..., done: _Optional[bool] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Error, _Mapping]] = ..., worker_id: _Optional[str] = ..., sealed_payload: _Optional[bytes] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., degraded_from: _Optional[str] = ..., served_model: _Optional[str] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ...) -> None: ...
    def __init__(self) -> None: ...

class Timing(_message.Message):
    __slots__ = ("stamps", "model_ns")
    class Stamp(_message.Message):
        __slots__ = ("at", "unix_ns")
        AT_FIELD_NUMBER: _ClassVar[int]
        UNIX_NS_FIELD_NUMBER: _ClassVar[int]
        at: str
        unix_ns: int
        def __init__(self, at: _Optional[str] = ..., unix_ns: _Optional[int] = ...) -> None: ...
    STAMPS_FIELD_NUMBER: _ClassVar[int]
    MODEL_NS_FIELD_NUMBER: _ClassVar[int]
    stamps: _containers.RepeatedCompositeFieldContainer[Timing.Stamp]
    model_ns: int
    def __init__(self, stamps: _Optional[_Iterable[_Union[Timing.Stamp, _Mapping]]] = ..., model_ns: _Optional[int] = ...) -> None: ...

class Sealed(_message.Message):
    __slots__ = ("ciphertext", "keys")
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    ciphertext: bytes
    keys: _containers.RepeatedCompositeFieldContainer[SealedKey]
    def __init__(self, ciphertext: _Optional[bytes] = ..., keys: _Optional[_Iterable[_Union[SealedKey, _Mapping]]] = ...) -> None: ...

class SealedKey(_message.Message):
    __slots__ = ("worker_key", "sealed_key")
    WORKER_KEY_FIELD_NUMBER: _ClassVar[int]
    SEALED_KEY_FIELD_NUMBER: _ClassVar[int]
    worker_key: bytes
    sealed_key: bytes
    def __init__(self, worker_key: _Optional[bytes] = ..., sealed_key: _Optional[bytes] = ...) -> None: ...

class SealedInput(_message.Message):
    __slots__ = ("input", "correlation_id", "tenant_id", "model_id", "worker_keys", "nonce", "issued_at_unix_ms")
    INPUT_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_KEYS_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    input: Input
    correlation_id: str
    tenant_id: str
    model_id: str
    worker_keys: _containers.RepeatedScalarFieldContainer[bytes]
    nonce: bytes
    issued_at_unix_ms: int
    def __init__(self, input: _Optional[_Union[Input, _Mapping]] = ..., correlation_id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., model_id: _Optional[str] = ..., worker_keys: _Optional[_Iterable[bytes]] = ..., nonce: _Optional[bytes] = ..., issued_at_unix_ms: _Optional[int] = ...) -> None: ...

class Input(_message.Message):
    __slots__ = ("text", "texts", "tensors", "messages")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    text: str
    texts: _tensor_pb2.TextBatch
    tensors: _tensor_pb2.TensorMap
    messages: ChatMessages
    def __init__(self, text: _Optional[str] = ..., texts: _Optional[_Union[_tensor_pb2.TextBatch, _Mapping]] = ..., tensors: _Optional[_Union[_tensor_pb2.TensorMap, _Mapping]] = ..., messages: _Optional[_Union[ChatMessages, _Mapping]] = ...) -> None: ...

class ChatMessages(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class GenerationParams(_message.Message):
    __slots__ = ("max_tokens", "temperature", "seed", "top_p", "min_tokens", "temperature_value", "top_k", "repetition_penalty", "stop")
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    MIN_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_VALUE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    REPETITION_PENALTY_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    max_tokens: int
    temperature: float
    seed: int
    top_p: float
    min_tokens: int
    temperature_value: float
    top_k: int
    repetition_penalty: float
    stop: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., seed: _Optional[int] = ..., top_p: _Optional[float] = ..., min_tokens: _Optional[int] = ..., temperature_value: _Optional[float] = ..., top_k: _Optional[int] = ..., repetition_penalty: _Optional[float] = ..., stop: _Optional[_Iterable[str]] = ...) -> None: ...

class Payload(_message.Message):
    __slots__ = ("text", "embedding", "tensor")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    text: str
    embedding: _tensor_pb2.Embedding
    tensor: _tensor_pb2.Tensor
    def __init__(self, text: _Optional[str] = ..., embedding: _Optional[_Union[_tensor_pb2.Embedding, _Mapping]] = ..., tensor: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("tenant_id", "model_id", "version", "input_tokens", "output_tokens", "compute_ms", "queue_ms")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    model_id: str
    version: str
    input_tokens: int
    output_tokens: int
    compute_ms: int
    queue_ms: int
    def __init__(self, tenant_id: _Optional[str] = ..., model_id: _Optional[str] = ..., version: _Optional[str] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., compute_ms: _Optional[int] = ..., queue_ms: _Optional[int] = ...) -> None: ...

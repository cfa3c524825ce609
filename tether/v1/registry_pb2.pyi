from tether.v1 import presence_pb2 as _presence_pb2
from tether.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Task(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_UNSPECIFIED: _ClassVar[Task]
    TASK_TEXT_GENERATION: _ClassVar[Task]
    TASK_EMBEDDING: _ClassVar[Task]
    TASK_TENSOR: _ClassVar[Task]
TASK_UNSPECIFIED: Task
TASK_TEXT_GENERATION: Task
TASK_EMBEDDING: Task
TASK_TENSOR: Task

class TensorSpec(_message.Message):
    __slots__ = ("name", "dtype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: _tensor_pb2.DataType
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[_tensor_pb2.DataType, str]] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class Capabilities(_message.Message):
    __slots__ = ("task", "inputs", "outputs", "gpu_classes", "min_vram_gb", "max_input_length", "degrade_to")
    TASK_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    GPU_CLASSES_FIELD_NUMBER: _ClassVar[int]
    MIN_VRAM_GB_FIELD_NUMBER: _ClassVar[int]
    MAX_INPUT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    DEGRADE_TO_FIELD_NUMBER: _ClassVar[int]
    task: Task
    inputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    outputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    gpu_classes: _containers.RepeatedScalarFieldContainer[str]
    min_vram_gb: int
    max_input_length: int
    degrade_to: _presence_pb2.ModelKey
    def __init__(self, task: _Optional[_Union[Task, str]] = ..., inputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., gpu_classes: _Optional[_Iterable[str]] = ..., min_vram_gb: _Optional[int] = ..., max_input_length: _Optional[int] = ..., degrade_to: _Optional[_Union[_presence_pb2.ModelKey, _Mapping]] = ...) -> None: ...

class Policy(_message.Message):
    __slots__ = ("allowed_tenants", "rate_limit_rps", "allow_degrade")
    ALLOWED_TENANTS_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_RPS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_DEGRADE_FIELD_NUMBER: _ClassVar[int]
    allowed_tenants: _containers.RepeatedScalarFieldContainer[str]
    rate_limit_rps: float
    allow_degrade: bool
    def __init__(self, allowed_tenants: _Optional[_Iterable[str]] = ..., rate_limit_rps: _Optional[float] = ..., allow_degrade: _Optional[bool] = ...) -> None: ...

class ArtifactRef(_message.Message):
    __slots__ = ("digest", "size_bytes", "format", "role")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    digest: str
    size_bytes: int
    format: str
    role: str
    def __init__(self, digest: _Optional[str] = ..., size_bytes: _Optional[int] = ..., format: _Optional[str] = ..., role: _Optional[str] = ...) -> None: ...

class ArtifactManifest(_message.Message):
    __slots__ = ("digest", "size_bytes", "format", "model_id", "version", "created_unix_ms", "publisher_key")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    PUBLISHER_KEY_FIELD_NUMBER: _ClassVar[int]
    digest: str
    size_bytes: int
    format: str
    model_id: str
    version: str
    created_unix_ms: int
    publisher_key: bytes
    def __init__(self, digest: _Optional[str] = ..., size_bytes: _Optional[int] = ..., format: _Optional[str] = ..., model_id: _Optional[str] = ..., version: _Optional[str] = ..., created_unix_ms: _Optional[int] = ..., publisher_key: _Optional[bytes] = ...) -> None: ...

class ModelRecord(_message.Message):
    __slots__ = ("model", "capabilities", "policy", "artifacts", "created_unix_ms", "publisher_key", "description")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    PUBLISHER_KEY_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    model: _presence_pb2.ModelKey
    capabilities: Capabilities
    policy: Policy
    artifacts: _containers.RepeatedCompositeFieldContainer[ArtifactRef]
    created_unix_ms: int
    publisher_key: bytes
    description: str
    def __init__(self, model: _Optional[_Union[_presence_pb2.ModelKey, _Mapping]] = ..., capabilities: _Optional[_Union[Capabilities, _Mapping]] = ..., policy: _Optional[_Union[Policy, _Mapping]] = ..., artifacts: _Optional[_Iterable[_Union[ArtifactRef, _Mapping]]] = ..., created_unix_ms: _Optional[int] = ..., publisher_key: _Optional[bytes] = ..., description: _Optional[str] = ...) -> None: ...

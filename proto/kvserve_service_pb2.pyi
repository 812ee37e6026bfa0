from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PinRequest(_message.Message):
    __slots__ = ("name", "version", "action")
    class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        PIN: _ClassVar[PinRequest.Action]
        UNPIN: _ClassVar[PinRequest.Action]
        ROLLBACK: _ClassVar[PinRequest.Action]
    PIN: PinRequest.Action
    UNPIN: PinRequest.Action
    ROLLBACK: PinRequest.Action
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    action: PinRequest.Action
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., action: _Optional[_Union[PinRequest.Action, str]] = ...) -> None: ...

class PinResponse(_message.Message):
    __slots__ = ("name", "serving", "pinned", "message")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    name: str
    serving: str
    pinned: str
    message: str
    def __init__(self, name: _Optional[str] = ..., serving: _Optional[str] = ..., pinned: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class GetConfigRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetConfigResponse(_message.Message):
    __slots__ = ("config_json",)
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    config_json: str
    def __init__(self, config_json: _Optional[str] = ...) -> None: ...

class UploadHeader(_message.Message):
    __slots__ = ("name", "filename", "size", "precision", "devices", "sha256", "options", "samples_npy", "sample_images", "parity_tolerance", "preprocessing", "labels", "labels_filename", "calibration_npy", "calibration_images")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_NPY_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_IMAGES_FIELD_NUMBER: _ClassVar[int]
    PARITY_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FILENAME_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_NPY_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_IMAGES_FIELD_NUMBER: _ClassVar[int]
    name: str
    filename: str
    size: int
    precision: str
    devices: _containers.RepeatedScalarFieldContainer[str]
    sha256: str
    options: _containers.ScalarMap[str, str]
    samples_npy: bytes
    sample_images: _containers.RepeatedScalarFieldContainer[bytes]
    parity_tolerance: float
    preprocessing: Preprocessing
    labels: bytes
    labels_filename: str
    calibration_npy: bytes
    calibration_images: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, name: _Optional[str] = ..., filename: _Optional[str] = ..., size: _Optional[int] = ..., precision: _Optional[str] = ..., devices: _Optional[_Iterable[str]] = ..., sha256: _Optional[str] = ..., options: _Optional[_Mapping[str, str]] = ..., samples_npy: _Optional[bytes] = ..., sample_images: _Optional[_Iterable[bytes]] = ..., parity_tolerance: _Optional[float] = ..., preprocessing: _Optional[_Union[Preprocessing, _Mapping]] = ..., labels: _Optional[bytes] = ..., labels_filename: _Optional[str] = ..., calibration_npy: _Optional[bytes] = ..., calibration_images: _Optional[_Iterable[bytes]] = ...) -> None: ...

class Preprocessing(_message.Message):
    __slots__ = ("mode", "resize", "center_crop")
    MODE_FIELD_NUMBER: _ClassVar[int]
    RESIZE_FIELD_NUMBER: _ClassVar[int]
    CENTER_CROP_FIELD_NUMBER: _ClassVar[int]
    mode: str
    resize: str
    center_crop: bool
    def __init__(self, mode: _Optional[str] = ..., resize: _Optional[str] = ..., center_crop: _Optional[bool] = ...) -> None: ...

class ConfigureRequest(_message.Message):
    __slots__ = ("name", "version", "preprocessing", "labels", "labels_filename", "clear_labels")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FILENAME_FIELD_NUMBER: _ClassVar[int]
    CLEAR_LABELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    preprocessing: Preprocessing
    labels: bytes
    labels_filename: str
    clear_labels: bool
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., preprocessing: _Optional[_Union[Preprocessing, _Mapping]] = ..., labels: _Optional[bytes] = ..., labels_filename: _Optional[str] = ..., clear_labels: _Optional[bool] = ...) -> None: ...

class UploadRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class UploadEvent(_message.Message):
    __slots__ = ("stage", "bytes_received", "bytes_total", "message", "name", "version", "manifest_json")
    class Stage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STAGE_UNSPECIFIED: _ClassVar[UploadEvent.Stage]
        RECEIVING: _ClassVar[UploadEvent.Stage]
        RECEIVED: _ClassVar[UploadEvent.Stage]
        CONVERTING: _ClassVar[UploadEvent.Stage]
        VERIFYING: _ClassVar[UploadEvent.Stage]
        LOADING: _ClassVar[UploadEvent.Stage]
        READY: _ClassVar[UploadEvent.Stage]
        QUANTIZING: _ClassVar[UploadEvent.Stage]
    STAGE_UNSPECIFIED: UploadEvent.Stage
    RECEIVING: UploadEvent.Stage
    RECEIVED: UploadEvent.Stage
    CONVERTING: UploadEvent.Stage
    VERIFYING: UploadEvent.Stage
    LOADING: UploadEvent.Stage
    READY: UploadEvent.Stage
    QUANTIZING: UploadEvent.Stage
    STAGE_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    stage: UploadEvent.Stage
    bytes_received: int
    bytes_total: int
    message: str
    name: str
    version: str
    manifest_json: str
    def __init__(self, stage: _Optional[_Union[UploadEvent.Stage, str]] = ..., bytes_received: _Optional[int] = ..., bytes_total: _Optional[int] = ..., message: _Optional[str] = ..., name: _Optional[str] = ..., version: _Optional[str] = ..., manifest_json: _Optional[str] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, versions: _Optional[_Iterable[str]] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class DescribeResponse(_message.Message):
    __slots__ = ("name", "version", "state", "reason", "device", "manifest_json", "versions")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    state: str
    reason: str
    device: str
    manifest_json: str
    versions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., device: _Optional[str] = ..., manifest_json: _Optional[str] = ..., versions: _Optional[_Iterable[str]] = ...) -> None: ...

class DevicesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Device(_message.Message):
    __slots__ = ("name", "available", "reason", "full_name", "plugin", "precisions", "properties")
    class PropertiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FULL_NAME_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    PRECISIONS_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    name: str
    available: bool
    reason: str
    full_name: str
    plugin: str
    precisions: _containers.RepeatedScalarFieldContainer[str]
    properties: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., available: _Optional[bool] = ..., reason: _Optional[str] = ..., full_name: _Optional[str] = ..., plugin: _Optional[str] = ..., precisions: _Optional[_Iterable[str]] = ..., properties: _Optional[_Mapping[str, str]] = ...) -> None: ...

class DevicesResponse(_message.Message):
    __slots__ = ("devices",)
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[Device]
    def __init__(self, devices: _Optional[_Iterable[_Union[Device, _Mapping]]] = ...) -> None: ...

class PluginsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Plugin(_message.Message):
    __slots__ = ("name", "version", "hooks", "builtin", "error")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HOOKS_FIELD_NUMBER: _ClassVar[int]
    BUILTIN_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    hooks: _containers.RepeatedScalarFieldContainer[str]
    builtin: bool
    error: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., hooks: _Optional[_Iterable[str]] = ..., builtin: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class PluginsResponse(_message.Message):
    __slots__ = ("plugins",)
    PLUGINS_FIELD_NUMBER: _ClassVar[int]
    plugins: _containers.RepeatedCompositeFieldContainer[Plugin]
    def __init__(self, plugins: _Optional[_Iterable[_Union[Plugin, _Mapping]]] = ...) -> None: ...

class BenchmarkRequest(_message.Message):
    __slots__ = ("name", "version", "iterations", "warmup", "backends", "precisions", "sample_npy", "batch", "seed")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    WARMUP_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    PRECISIONS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_NPY_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    iterations: int
    warmup: int
    backends: _containers.RepeatedScalarFieldContainer[str]
    precisions: _containers.RepeatedScalarFieldContainer[str]
    sample_npy: bytes
    batch: int
    seed: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., iterations: _Optional[int] = ..., warmup: _Optional[int] = ..., backends: _Optional[_Iterable[str]] = ..., precisions: _Optional[_Iterable[str]] = ..., sample_npy: _Optional[bytes] = ..., batch: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class BenchmarkResult(_message.Message):
    __slots__ = ("backend", "precision", "iterations", "batch", "avg_s", "p50_s", "p90_s", "p99_s", "min_s", "max_s", "fps", "requests", "speedup_vs_keras", "execution_precision", "note")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    AVG_S_FIELD_NUMBER: _ClassVar[int]
    P50_S_FIELD_NUMBER: _ClassVar[int]
    P90_S_FIELD_NUMBER: _ClassVar[int]
    P99_S_FIELD_NUMBER: _ClassVar[int]
    MIN_S_FIELD_NUMBER: _ClassVar[int]
    MAX_S_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    SPEEDUP_VS_KERAS_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PRECISION_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    backend: str
    precision: str
    iterations: int
    batch: int
    avg_s: float
    p50_s: float
    p90_s: float
    p99_s: float
    min_s: float
    max_s: float
    fps: float
    requests: int
    speedup_vs_keras: float
    execution_precision: str
    note: str
    def __init__(self, backend: _Optional[str] = ..., precision: _Optional[str] = ..., iterations: _Optional[int] = ..., batch: _Optional[int] = ..., avg_s: _Optional[float] = ..., p50_s: _Optional[float] = ..., p90_s: _Optional[float] = ..., p99_s: _Optional[float] = ..., min_s: _Optional[float] = ..., max_s: _Optional[float] = ..., fps: _Optional[float] = ..., requests: _Optional[int] = ..., speedup_vs_keras: _Optional[float] = ..., execution_precision: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class BenchmarkEvent(_message.Message):
    __slots__ = ("stage", "message", "result", "results", "name", "version", "input")
    class Stage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STAGE_UNSPECIFIED: _ClassVar[BenchmarkEvent.Stage]
        PREPARING: _ClassVar[BenchmarkEvent.Stage]
        RUNNING: _ClassVar[BenchmarkEvent.Stage]
        RESULT: _ClassVar[BenchmarkEvent.Stage]
        DONE: _ClassVar[BenchmarkEvent.Stage]
    STAGE_UNSPECIFIED: BenchmarkEvent.Stage
    PREPARING: BenchmarkEvent.Stage
    RUNNING: BenchmarkEvent.Stage
    RESULT: BenchmarkEvent.Stage
    DONE: BenchmarkEvent.Stage
    STAGE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    stage: BenchmarkEvent.Stage
    message: str
    result: BenchmarkResult
    results: _containers.RepeatedCompositeFieldContainer[BenchmarkResult]
    name: str
    version: str
    input: str
    def __init__(self, stage: _Optional[_Union[BenchmarkEvent.Stage, str]] = ..., message: _Optional[str] = ..., result: _Optional[_Union[BenchmarkResult, _Mapping]] = ..., results: _Optional[_Iterable[_Union[BenchmarkResult, _Mapping]]] = ..., name: _Optional[str] = ..., version: _Optional[str] = ..., input: _Optional[str] = ...) -> None: ...

from tracemark.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerationParams(_message.Message):
    __slots__ = ("max_new_tokens", "temperature", "seed")
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    max_new_tokens: int
    temperature: float
    seed: int
    def __init__(self, max_new_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("problem", "params", "rewriters", "rewriter_options_json")
    class RewriterOptionsJsonEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    REWRITERS_FIELD_NUMBER: _ClassVar[int]
    REWRITER_OPTIONS_JSON_FIELD_NUMBER: _ClassVar[int]
    problem: str
    params: GenerationParams
    rewriters: _containers.RepeatedScalarFieldContainer[str]
    rewriter_options_json: _containers.ScalarMap[str, str]
    def __init__(self, problem: _Optional[str] = ..., params: _Optional[_Union[GenerationParams, _Mapping]] = ..., rewriters: _Optional[_Iterable[str]] = ..., rewriter_options_json: _Optional[_Mapping[str, str]] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("trace_id", "trace", "final_answer", "rewriters", "answer_preserved", "prompt_tokens", "completion_tokens", "generation_seconds", "rewrite_seconds")
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    FINAL_ANSWER_FIELD_NUMBER: _ClassVar[int]
    REWRITERS_FIELD_NUMBER: _ClassVar[int]
    ANSWER_PRESERVED_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REWRITE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    trace_id: str
    trace: str
    final_answer: str
    rewriters: _containers.RepeatedCompositeFieldContainer[_common_pb2.RewriterRun]
    answer_preserved: bool
    prompt_tokens: int
    completion_tokens: int
    generation_seconds: float
    rewrite_seconds: float
    def __init__(self, trace_id: _Optional[str] = ..., trace: _Optional[str] = ..., final_answer: _Optional[str] = ..., rewriters: _Optional[_Iterable[_Union[_common_pb2.RewriterRun, _Mapping]]] = ..., answer_preserved: _Optional[bool] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., generation_seconds: _Optional[float] = ..., rewrite_seconds: _Optional[float] = ...) -> None: ...

class GenerateStreamRequest(_message.Message):
    __slots__ = ("problem", "params", "rewriters", "rewriter_options_json")
    class RewriterOptionsJsonEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    REWRITERS_FIELD_NUMBER: _ClassVar[int]
    REWRITER_OPTIONS_JSON_FIELD_NUMBER: _ClassVar[int]
    problem: str
    params: GenerationParams
    rewriters: _containers.RepeatedScalarFieldContainer[str]
    rewriter_options_json: _containers.ScalarMap[str, str]
    def __init__(self, problem: _Optional[str] = ..., params: _Optional[_Union[GenerationParams, _Mapping]] = ..., rewriters: _Optional[_Iterable[str]] = ..., rewriter_options_json: _Optional[_Mapping[str, str]] = ...) -> None: ...

class GenerateStreamResponse(_message.Message):
    __slots__ = ("text_delta", "completion_tokens", "done")
    TEXT_DELTA_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    text_delta: str
    completion_tokens: int
    done: GenerateResponse
    def __init__(self, text_delta: _Optional[str] = ..., completion_tokens: _Optional[int] = ..., done: _Optional[_Union[GenerateResponse, _Mapping]] = ...) -> None: ...

class GetTeacherInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetTeacherInfoResponse(_message.Message):
    __slots__ = ("model_id", "backend", "quantization", "quantization_note", "device", "dtype", "parameter_bytes", "max_batch_size", "default_rewriters", "decoding")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_NOTE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_REWRITERS_FIELD_NUMBER: _ClassVar[int]
    DECODING_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    backend: str
    quantization: str
    quantization_note: str
    device: str
    dtype: str
    parameter_bytes: int
    max_batch_size: int
    default_rewriters: _containers.RepeatedScalarFieldContainer[str]
    decoding: str
    def __init__(self, model_id: _Optional[str] = ..., backend: _Optional[str] = ..., quantization: _Optional[str] = ..., quantization_note: _Optional[str] = ..., device: _Optional[str] = ..., dtype: _Optional[str] = ..., parameter_bytes: _Optional[int] = ..., max_batch_size: _Optional[int] = ..., default_rewriters: _Optional[_Iterable[str]] = ..., decoding: _Optional[str] = ...) -> None: ...

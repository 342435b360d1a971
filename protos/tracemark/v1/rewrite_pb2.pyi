from tracemark.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PluginStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PLUGIN_STATUS_UNSPECIFIED: _ClassVar[PluginStatus]
    PLUGIN_STATUS_LOADED: _ClassVar[PluginStatus]
    PLUGIN_STATUS_FAILED: _ClassVar[PluginStatus]
    PLUGIN_STATUS_DISABLED: _ClassVar[PluginStatus]
PLUGIN_STATUS_UNSPECIFIED: PluginStatus
PLUGIN_STATUS_LOADED: PluginStatus
PLUGIN_STATUS_FAILED: PluginStatus
PLUGIN_STATUS_DISABLED: PluginStatus

class RewriteRequest(_message.Message):
    __slots__ = ("trace", "problem", "rewriters", "rewriter_options_json", "seed")
    class RewriterOptionsJsonEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TRACE_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    REWRITERS_FIELD_NUMBER: _ClassVar[int]
    REWRITER_OPTIONS_JSON_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    trace: str
    problem: str
    rewriters: _containers.RepeatedScalarFieldContainer[str]
    rewriter_options_json: _containers.ScalarMap[str, str]
    seed: int
    def __init__(self, trace: _Optional[str] = ..., problem: _Optional[str] = ..., rewriters: _Optional[_Iterable[str]] = ..., rewriter_options_json: _Optional[_Mapping[str, str]] = ..., seed: _Optional[int] = ...) -> None: ...

class RewriteResponse(_message.Message):
    __slots__ = ("trace_id", "trace", "original_answer", "final_answer", "answer_preserved", "rewriters", "rewrite_seconds")
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_ANSWER_FIELD_NUMBER: _ClassVar[int]
    FINAL_ANSWER_FIELD_NUMBER: _ClassVar[int]
    ANSWER_PRESERVED_FIELD_NUMBER: _ClassVar[int]
    REWRITERS_FIELD_NUMBER: _ClassVar[int]
    REWRITE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    trace_id: str
    trace: str
    original_answer: str
    final_answer: str
    answer_preserved: bool
    rewriters: _containers.RepeatedCompositeFieldContainer[_common_pb2.RewriterRun]
    rewrite_seconds: float
    def __init__(self, trace_id: _Optional[str] = ..., trace: _Optional[str] = ..., original_answer: _Optional[str] = ..., final_answer: _Optional[str] = ..., answer_preserved: _Optional[bool] = ..., rewriters: _Optional[_Iterable[_Union[_common_pb2.RewriterRun, _Mapping]]] = ..., rewrite_seconds: _Optional[float] = ...) -> None: ...

class RewriterDescription(_message.Message):
    __slots__ = ("name", "distribution", "version", "status", "error", "options_schema_json", "entry_point", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_SCHEMA_JSON_FIELD_NUMBER: _ClassVar[int]
    ENTRY_POINT_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    distribution: str
    version: str
    status: PluginStatus
    error: str
    options_schema_json: str
    entry_point: str
    description: str
    def __init__(self, name: _Optional[str] = ..., distribution: _Optional[str] = ..., version: _Optional[str] = ..., status: _Optional[_Union[PluginStatus, str]] = ..., error: _Optional[str] = ..., options_schema_json: _Optional[str] = ..., entry_point: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class ListRewritersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRewritersResponse(_message.Message):
    __slots__ = ("rewriters",)
    REWRITERS_FIELD_NUMBER: _ClassVar[int]
    rewriters: _containers.RepeatedCompositeFieldContainer[RewriterDescription]
    def __init__(self, rewriters: _Optional[_Iterable[_Union[RewriterDescription, _Mapping]]] = ...) -> None: ...

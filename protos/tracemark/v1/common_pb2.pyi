from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GuardOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GUARD_OUTCOME_UNSPECIFIED: _ClassVar[GuardOutcome]
    GUARD_OUTCOME_PRESERVED: _ClassVar[GuardOutcome]
    GUARD_OUTCOME_PRESERVED_AFTER_RETRY: _ClassVar[GuardOutcome]
    GUARD_OUTCOME_FELL_BACK: _ClassVar[GuardOutcome]
    GUARD_OUTCOME_NO_ANSWER: _ClassVar[GuardOutcome]
GUARD_OUTCOME_UNSPECIFIED: GuardOutcome
GUARD_OUTCOME_PRESERVED: GuardOutcome
GUARD_OUTCOME_PRESERVED_AFTER_RETRY: GuardOutcome
GUARD_OUTCOME_FELL_BACK: GuardOutcome
GUARD_OUTCOME_NO_ANSWER: GuardOutcome

class RewriterRun(_message.Message):
    __slots__ = ("name", "version", "guard", "attempts", "seconds", "detail")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    GUARD_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    guard: GuardOutcome
    attempts: int
    seconds: float
    detail: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., guard: _Optional[_Union[GuardOutcome, str]] = ..., attempts: _Optional[int] = ..., seconds: _Optional[float] = ..., detail: _Optional[str] = ...) -> None: ...

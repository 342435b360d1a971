from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Verdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_UNSPECIFIED: _ClassVar[Verdict]
    VERDICT_DETECTED: _ClassVar[Verdict]
    VERDICT_NOT_DETECTED: _ClassVar[Verdict]
    VERDICT_INCONCLUSIVE: _ClassVar[Verdict]
VERDICT_UNSPECIFIED: Verdict
VERDICT_DETECTED: Verdict
VERDICT_NOT_DETECTED: Verdict
VERDICT_INCONCLUSIVE: Verdict

class InvestigateRequest(_message.Message):
    __slots__ = ("suspect", "accounts", "alpha", "mode", "query_budget", "correction")
    SUSPECT_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    QUERY_BUDGET_FIELD_NUMBER: _ClassVar[int]
    CORRECTION_FIELD_NUMBER: _ClassVar[int]
    suspect: str
    accounts: _containers.RepeatedScalarFieldContainer[str]
    alpha: float
    mode: str
    query_budget: int
    correction: str
    def __init__(self, suspect: _Optional[str] = ..., accounts: _Optional[_Iterable[str]] = ..., alpha: _Optional[float] = ..., mode: _Optional[str] = ..., query_budget: _Optional[int] = ..., correction: _Optional[str] = ...) -> None: ...

class InvestigateProgress(_message.Message):
    __slots__ = ("stage", "done", "total", "message")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    stage: str
    done: int
    total: int
    message: str
    def __init__(self, stage: _Optional[str] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class AccountResult(_message.Message):
    __slots__ = ("account", "p_value", "adjusted_p_value", "rejected", "pairs", "channel_tested", "channel_p_value", "pair_p_value")
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    ADJUSTED_P_VALUE_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_TESTED_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_P_VALUE_FIELD_NUMBER: _ClassVar[int]
    PAIR_P_VALUE_FIELD_NUMBER: _ClassVar[int]
    account: str
    p_value: float
    adjusted_p_value: float
    rejected: bool
    pairs: int
    channel_tested: bool
    channel_p_value: float
    pair_p_value: float
    def __init__(self, account: _Optional[str] = ..., p_value: _Optional[float] = ..., adjusted_p_value: _Optional[float] = ..., rejected: _Optional[bool] = ..., pairs: _Optional[int] = ..., channel_tested: _Optional[bool] = ..., channel_p_value: _Optional[float] = ..., pair_p_value: _Optional[float] = ...) -> None: ...

class InvestigateResult(_message.Message):
    __slots__ = ("report_id", "verdict", "attributed_account", "p_value", "accounts", "detail", "registration_seq", "prior_registrations", "provider_tested", "distilled_from_us", "provider_p_value", "provider_adjusted_p_value")
    REPORT_ID_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTED_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    REGISTRATION_SEQ_FIELD_NUMBER: _ClassVar[int]
    PRIOR_REGISTRATIONS_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_TESTED_FIELD_NUMBER: _ClassVar[int]
    DISTILLED_FROM_US_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_P_VALUE_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_ADJUSTED_P_VALUE_FIELD_NUMBER: _ClassVar[int]
    report_id: str
    verdict: Verdict
    attributed_account: str
    p_value: float
    accounts: _containers.RepeatedCompositeFieldContainer[AccountResult]
    detail: str
    registration_seq: int
    prior_registrations: int
    provider_tested: bool
    distilled_from_us: bool
    provider_p_value: float
    provider_adjusted_p_value: float
    def __init__(self, report_id: _Optional[str] = ..., verdict: _Optional[_Union[Verdict, str]] = ..., attributed_account: _Optional[str] = ..., p_value: _Optional[float] = ..., accounts: _Optional[_Iterable[_Union[AccountResult, _Mapping]]] = ..., detail: _Optional[str] = ..., registration_seq: _Optional[int] = ..., prior_registrations: _Optional[int] = ..., provider_tested: _Optional[bool] = ..., distilled_from_us: _Optional[bool] = ..., provider_p_value: _Optional[float] = ..., provider_adjusted_p_value: _Optional[float] = ...) -> None: ...

class InvestigateResponse(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: InvestigateProgress
    result: InvestigateResult
    def __init__(self, progress: _Optional[_Union[InvestigateProgress, _Mapping]] = ..., result: _Optional[_Union[InvestigateResult, _Mapping]] = ...) -> None: ...

class GetReportRequest(_message.Message):
    __slots__ = ("report_id",)
    REPORT_ID_FIELD_NUMBER: _ClassVar[int]
    report_id: str
    def __init__(self, report_id: _Optional[str] = ...) -> None: ...

class GetReportResponse(_message.Message):
    __slots__ = ("report_id", "envelope_json", "verdict", "created_at")
    REPORT_ID_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_JSON_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    report_id: str
    envelope_json: str
    verdict: Verdict
    created_at: str
    def __init__(self, report_id: _Optional[str] = ..., envelope_json: _Optional[str] = ..., verdict: _Optional[_Union[Verdict, str]] = ..., created_at: _Optional[str] = ...) -> None: ...

class VerifyReportRequest(_message.Message):
    __slots__ = ("report_id", "envelope_json")
    REPORT_ID_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_JSON_FIELD_NUMBER: _ClassVar[int]
    report_id: str
    envelope_json: str
    def __init__(self, report_id: _Optional[str] = ..., envelope_json: _Optional[str] = ...) -> None: ...

class VerifyReportResponse(_message.Message):
    __slots__ = ("valid", "signature_valid", "chain_valid", "problems", "key_id")
    VALID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_VALID_FIELD_NUMBER: _ClassVar[int]
    CHAIN_VALID_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    signature_valid: bool
    chain_valid: bool
    problems: _containers.RepeatedScalarFieldContainer[str]
    key_id: str
    def __init__(self, valid: _Optional[bool] = ..., signature_valid: _Optional[bool] = ..., chain_valid: _Optional[bool] = ..., problems: _Optional[_Iterable[str]] = ..., key_id: _Optional[str] = ...) -> None: ...

"""API shapes of the verifier services (pydantic): requests are strict and closed, answers typed."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr

Category = Literal["national_body", "local_government", "certified_business", "delegate"]
Service = Literal["revocation", "links", "basic_info"]
UsageService = Literal["ocsp", "crl", "links", "basic_info"]
ConsentMethod = Literal["signed", "online", "written", "counter"]

CODE_PATTERN = r"^[a-z0-9][a-z0-9_-]{1,31}$"
# A serial as the API accepts it: hex digits, optionally colon-separated (openssl's way).
SERIAL_PATTERN = r"^[0-9A-Fa-f:]{1,59}$"
MAX_OCSP_RATE = 100_000.0

Code = Annotated[StrictStr, Field(min_length=2, max_length=32, pattern=CODE_PATTERN)]
Name = Annotated[StrictStr, Field(min_length=1, max_length=200)]
Serial = Annotated[StrictStr, Field(min_length=1, max_length=59, pattern=SERIAL_PATTERN)]
Rate = Annotated[float, Field(strict=True, gt=0, le=MAX_OCSP_RATE)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VerifierCreate(_Request):
    """登録: a new verifier."""

    code: Code
    name: Name
    category: Category
    services: Annotated[list[Service], Field(min_length=1, max_length=3)]
    ocsp_rate_per_second: Rate = 50.0
    principal_code: Code | None = None


class VerifierUpdate(_Request):
    """Change a verifier's name, services or OCSP rate (omitted fields stay)."""

    name: Name | None = None
    services: Annotated[list[Service], Field(min_length=1, max_length=3)] | None = None
    ocsp_rate_per_second: Rate | None = None


class Suspension(_Request):
    reason: Annotated[StrictStr, Field(min_length=1, max_length=200)]


class TokenRequest(_Request):
    label: Annotated[StrictStr, Field(max_length=100)] = ""
    expires_in_days: Annotated[int, Field(strict=True, ge=1, le=3660)] | None = None


class RotateRequest(_Request):
    # How long the old token keeps working, so that a client can switch without an outage.
    overlap_hours: Annotated[int, Field(strict=True, ge=0, le=168)] = 24


class SerialRequest(_Request):
    serial: Serial


class ConsentCreate(_Request):
    """本人同意 as the verifier obtained it from the holder."""

    serial: Serial
    method: ConsentMethod
    given_at: datetime
    expires_at: datetime | None = None
    evidence_sha256: Annotated[StrictStr, Field(pattern=r"^[0-9a-f]{64}$")] | None = None


class VerifierView(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    code: str
    name: str
    category: Category
    category_ja: str
    principal_code: str | None
    services: list[Service]
    status: Literal["active", "suspended"]
    suspension_reason: str | None
    ocsp_rate_per_second: float
    created_at: datetime
    updated_at: datetime
    requests_today: int = 0
    requests_30_days: int = 0


class TokenView(BaseModel):
    """A credential as the registry shows it: never the token itself."""

    id: int
    hint: str
    label: str
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None
    replaced_by: int | None
    active: bool


class IssuedToken(BaseModel):
    """The one answer that carries the token: store it now, it is never shown again."""

    id: int
    verifier_code: str
    token: str
    hint: str
    expires_at: datetime | None


class UsageRow(BaseModel):
    day: date
    service: UsageService
    requests: int


class VerifierDetail(BaseModel):
    verifier: VerifierView
    tokens: list[TokenView]
    usage: list[UsageRow]
    delegates: list[str]


class VerifierIdentityView(BaseModel):
    """Who the caller is, as the verifier services see them."""

    code: str
    name: str
    category: Category
    principal_code: str | None
    services: list[Service]
    ocsp_rate_per_second: float


class CertificateStatus(BaseModel):
    serial: str
    ca_id: str
    kind: str
    status: Literal["good", "revoked", "hold"]
    reason: str | None
    status_changed_at: datetime | None
    invalidity_date: datetime | None
    not_before: datetime
    not_after: datetime
    expired: bool


class LinkStep(BaseModel):
    certificate: CertificateStatus
    # How this certificate follows the previous one: renewal (更新, the CA's replaced_by) or
    # reissue (a new certificate of the same kind for the same holder after this one ended).
    link: Literal["renewal", "reissue"] | None


class LinkChain(BaseModel):
    """新旧紐付け: from the certificate asked about to the newest one of the chain."""

    serial: str
    chain: list[LinkStep]
    current_serial: str | None  # the newest certificate when it is good and unexpired


class Consent(BaseModel):
    id: int
    verifier_code: str
    ca_id: str
    serial: str
    method: ConsentMethod
    evidence_sha256: str | None
    given_at: datetime
    expires_at: datetime | None
    recorded_at: datetime
    recorded_by: str
    withdrawn_at: datetime | None
    withdrawn_by: str | None
    withdrawal_channel: str | None
    active: bool


class BasicInfo(BaseModel):
    """The holder's current 基本4情報 from the national copy (機構保存本人確認情報)."""

    serial: str
    certificate_status: Literal["good", "revoked", "hold"]
    certificate_reason: str | None
    name: str
    name_kana: str
    former_name: str | None
    birth_date: date
    sex: Literal[1, 2]
    address: str | None  # None when withheld (DV等支援措置)
    address_withheld: bool
    holder_status: Literal["active", "removed"]
    holder_status_reason: str | None  # 異動事由 when removed (死亡, 国外転出 …)
    as_of: date  # 異動年月日 of the version given
    consent_id: int


class IssuanceRecordView(BaseModel):
    id: int
    ca_id: str
    serial: str
    kind: str
    resident_code: str | None
    action: str
    renewal_of: str | None
    actor: str
    recorded_at: datetime


class IssuanceRecordPage(BaseModel):
    records: list[IssuanceRecordView]
    total: int
    page: int
    page_size: int


class CaStatus(BaseModel):
    id: str
    hierarchy: str
    role: str
    parent_id: str | None
    subject: str
    key_algorithm: str
    key_label: str
    key_store: str  # file / pkcs11
    key_present: bool | None  # None when the store is a token (not opened to look)
    not_before: datetime
    not_after: datetime
    valid: bool
    days_left: int
    issued_count: int
    good: int
    revoked: int
    hold: int
    crl_number: int


class CountRow(BaseModel):
    month: str  # YYYY-MM (JST)
    key: str  # kind or reason
    kind: str
    count: int


class Statistics(BaseModel):
    since: str  # YYYY-MM (JST), the first month counted
    issued: list[CountRow]  # key = issue / renew
    revoked: list[CountRow]  # key = RFC 5280 reason (certificateHold for holds)
    by_status: dict[str, dict[str, int]]  # kind -> status -> count (all time)


class CrlStatus(BaseModel):
    ca_id: str
    partition: int
    crl_number: int | None
    this_update: datetime | None
    next_update: datetime | None
    entries: int | None
    url: str | None
    complete: bool | None
    overdue: bool
    alert: str | None  # missing / overdue / incomplete


class Dashboard(BaseModel):
    cas: list[CaStatus]
    statistics: Statistics
    crls: list[CrlStatus]
    alerts: list[str]
    verifiers: list[VerifierView]

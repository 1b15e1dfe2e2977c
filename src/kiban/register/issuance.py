"""Issuing register documents for a request at the counter (証明書の交付).

The glue between a clerk's request and the PDF layouts of :mod:`kiban.register.documents`: each
function loads the records of the clerk's own municipality, refuses what the law refuses (a
third party asking about a person under a DV等支援措置; a 個人番号 for anyone but the person or
their household), builds the printable entries, draws the PDF (which records it in the ledger)
and writes one audit entry per person printed: subject the 住民票コード, items the printed items'
names, never a 個人番号 itself.

Everything happens in the caller's transaction: a refusal raises before anything is written
(the refusal itself is logged, flagged ``dv_restricted``, in the same transaction — the API
commits that log entry and nothing else).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import date, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from kiban.core import audit
from kiban.core.documents import SignerProvider
from kiban.core.identifiers import IdentifierError, validate_resident_code
from kiban.register import documents as layouts
from kiban.register import service
from kiban.register.documents import (
    ENTRY_ITEMS,
    CopyOptions,
    IssuedPdf,
    Requester,
    ResidentEntry,
    entry_from_resident,
)
from kiban.register.models import Household, MoveOutCertificate, Resident, ResidentStatus
from kiban.register.rules import AccessDenied, NotFound, RegisterError
from kiban.register.schemas import Actor
from kiban.register.seals import service as seals
from kiban.register.taxes import service as taxes

__all__ = [
    "PURPOSES",
    "records_here",
    "entry_certificate",
    "move_out_certificate",
    "removed_record_copy",
    "resident_copy",
    "seal_certificate",
    "tax_certificate",
]

# The audit log's purpose per document (交付事務).
PURPOSES: dict[str, str] = {
    "resident_copy": "住民票の写しの交付",
    "entry_certificate": "住民票記載事項証明書の交付",
    "removed_record_copy": "除票の写しの交付",
    "move_out_certificate": "転出証明書の交付",
    "seal_certificate": "印鑑登録証明書の交付",
    "tax_certificate": "所得・課税証明書の交付",
}
_REQUESTER_JA = {
    Requester.SELF: "本人",
    Requester.HOUSEHOLD_MEMBER: "同一世帯員",
    Requester.AGENT: "代理人",
    Requester.THIRD_PARTY: "第三者",
}


# --- loading -------------------------------------------------------------------------------------


def _valid_code(value: str, field: str = "resident_code") -> str:
    try:
        return validate_resident_code(value)
    except IdentifierError as exc:
        raise RegisterError(field, exc.rule, exc.detail) from exc


def records_here(session: Session, actor: Actor, resident_code: str) -> list[Resident]:
    """Every record of the code in the clerk's municipality; 403 when it lives elsewhere only."""
    code = _valid_code(resident_code)
    rows = list(session.scalars(select(Resident).where(Resident.resident_code == code)))
    mine = [r for r in rows if r.municipality_code == actor.municipality_code]
    if not mine:
        if rows:
            raise AccessDenied(
                "resident_code", "own_municipality", "the person is not a resident of this municipality"
            )
        raise NotFound("resident_code", "not_found", "no record with this 住民票コード")
    return mine


def _active(session: Session, actor: Actor, resident_code: str) -> Resident:
    rows = [r for r in records_here(session, actor, resident_code) if r.status == ResidentStatus.ACTIVE.value]
    if not rows:
        raise RegisterError(
            "resident_code", "dead_or_removed", "the record is removed (除票): ask for a 除票の写し"
        )
    return rows[0]


def _removed(session: Session, actor: Actor, resident_code: str) -> Resident:
    rows = [r for r in records_here(session, actor, resident_code) if r.status != ResidentStatus.ACTIVE.value]
    if not rows:
        raise RegisterError("resident_code", "not_removed", "the record is active: there is no 除票")
    rows.sort(key=lambda r: r.removed_at or r.updated_at)
    return rows[-1]


def _head_name(session: Session, r: Resident) -> str:
    household = session.get(Household, r.household_id)
    head = (
        session.get(Resident, household.head_resident_id)
        if household and household.head_resident_id
        else None
    )
    if head is None:
        return f"{r.family_name}　{r.given_name}"
    return f"{head.family_name}　{head.given_name}"


def _household(session: Session, r: Resident) -> list[Resident]:
    """The active members of ``r``'s household, the head first, then by birth date (記載順)."""
    members = list(
        session.scalars(
            select(Resident).where(
                Resident.household_id == r.household_id, Resident.status == ResidentStatus.ACTIVE.value
            )
        )
    )
    household = session.get(Household, r.household_id)
    head_id = household.head_resident_id if household else None
    members.sort(key=lambda m: (m.id != head_id, m.birth_date, m.resident_code))
    return members


# --- the two legal checks ------------------------------------------------------------------------


def _check_restriction(
    session: Session,
    actor: Actor,
    persons: Sequence[Resident],
    requester: Requester,
    document: str,
    today: date,
) -> list[str]:
    """住基法12条の3 / 支援措置: only the person may get a restricted person's document.

    Returns the restricted codes (their reads are flagged); refuses, logging the refusal, when
    anyone else asks.
    """
    restricted = [r.resident_code for r in persons if service.is_restricted(session, r.resident_code, today)]
    if restricted and requester is not Requester.SELF:
        audit.record_many(
            session,
            [
                {
                    "actor": actor.username,
                    "role": actor.role,
                    "action": "refuse",
                    "purpose": PURPOSES[document],
                    "subject": code,
                    "items": ["支援措置"],
                    "organisation": actor.municipality_code,
                    "detail": {"requester": requester.value},
                    "flags": ["dv_restricted"],
                }
                for code in restricted
            ],
        )
        raise AccessDenied(
            "requester",
            "dv_restricted",
            "the record is under a support measure (支援措置): only the person may receive it",
        )
    return restricted


def _check_number(options: CopyOptions, requester: Requester) -> None:
    # The layouts enforce this too; checking first gives the clerk the error before any drawing.
    if options.individual_number and requester not in (Requester.SELF, Requester.HOUSEHOLD_MEMBER):
        raise RegisterError(
            "options.individual_number",
            "only_to_the_person",
            "個人番号 is printed only for the person or a member of their household",
        )


def _audit_printed(
    session: Session,
    actor: Actor,
    document: str,
    printed: IssuedPdf,
    codes: Sequence[str],
    requester: Requester,
    restricted: Iterable[str],
) -> None:
    data = printed.data
    persons: list[dict[str, Any]] = data.get("世帯員") or data.get("記載事項") or []
    flagged = set(restricted)
    entries = []
    for index, code in enumerate(codes):
        person = persons[index] if index < len(persons) else {}
        # Item names only: the values (a 個人番号 among them) never reach the log.
        items = sorted(
            {"印影" if k.startswith("_印影") else k for k in person} | {k for k in data if k == "住所"}
        )
        entries.append(
            {
                "actor": actor.username,
                "role": actor.role,
                "action": "read",
                "purpose": PURPOSES[document],
                "subject": code,
                "items": items or ["証明書"],
                "organisation": actor.municipality_code,
                "detail": {
                    "serial": printed.serial,
                    "document_type": printed.issuance.document_type,
                    "requester": requester.value,
                },
                "flags": ["dv_restricted"] if code in flagged else [],
            }
        )
    audit.record_many(session, entries)


def _today(today: date | None) -> date:
    return today if today is not None else service.today_jst()


def _issuer(actor: Actor) -> str:
    return actor.username


# --- one function per document -------------------------------------------------------------------


def resident_copy(
    session: Session,
    actor: Actor,
    resident_code: str,
    *,
    household: bool = False,
    options: CopyOptions | None = None,
    requester: Requester = Requester.SELF,
    signers: SignerProvider | None = None,
    today: date | None = None,
    issued_at: datetime | None = None,
) -> IssuedPdf:
    """住民票の写し of the person (個人票), or of their whole household (世帯連記式)."""
    options = options or CopyOptions()
    requester = Requester(requester)
    _check_number(options, requester)
    r = _active(session, actor, resident_code)
    persons = _household(session, r) if household else [r]
    restricted = _check_restriction(session, actor, persons, requester, "resident_copy", _today(today))
    head = _head_name(session, r)
    entries = [entry_from_resident(p, head) for p in persons]
    printed = layouts.issue_resident_copy(
        session,
        layouts.ResidentCopyRequest(
            municipality_code=actor.municipality_code,
            entries=entries,
            issuer=_issuer(actor),
            household=household,
            options=options,
            requester=requester,
        ),
        signers=signers,
        issued_at=issued_at,
    )
    _audit_printed(
        session, actor, "resident_copy", printed, [p.resident_code for p in persons], requester, restricted
    )
    return printed


def entry_certificate(
    session: Session,
    actor: Actor,
    resident_code: str,
    items: Iterable[str],
    *,
    household: bool = False,
    requester: Requester = Requester.SELF,
    signers: SignerProvider | None = None,
    today: date | None = None,
    issued_at: datetime | None = None,
) -> IssuedPdf:
    """住民票記載事項証明書: only ``items`` (keys of ``documents.ENTRY_ITEMS``) are certified."""
    requester = Requester(requester)
    chosen = frozenset(items)
    unknown = sorted(chosen - set(ENTRY_ITEMS))
    if unknown or not chosen:
        raise RegisterError("items", "known_item", f"choose items among {sorted(ENTRY_ITEMS)}")
    r = _active(session, actor, resident_code)
    persons = _household(session, r) if household else [r]
    restricted = _check_restriction(session, actor, persons, requester, "entry_certificate", _today(today))
    head = _head_name(session, r)
    printed = layouts.issue_entry_certificate(
        session,
        layouts.EntryCertificateRequest(
            municipality_code=actor.municipality_code,
            entries=[entry_from_resident(p, head) for p in persons],
            items=chosen,
            issuer=_issuer(actor),
            requester=requester,
        ),
        signers=signers,
        issued_at=issued_at,
    )
    _audit_printed(
        session,
        actor,
        "entry_certificate",
        printed,
        [p.resident_code for p in persons],
        requester,
        restricted,
    )
    return printed


def removed_record_copy(
    session: Session,
    actor: Actor,
    resident_code: str,
    *,
    options: CopyOptions | None = None,
    requester: Requester = Requester.SELF,
    signers: SignerProvider | None = None,
    today: date | None = None,
    issued_at: datetime | None = None,
) -> IssuedPdf:
    """除票の写し of the person's newest 除票 in the clerk's municipality."""
    options = options or CopyOptions()
    requester = Requester(requester)
    _check_number(options, requester)
    r = _removed(session, actor, resident_code)
    restricted = _check_restriction(session, actor, [r], requester, "removed_record_copy", _today(today))
    printed = layouts.issue_removed_record_copy(
        session,
        layouts.RemovedRecordCopyRequest(
            municipality_code=actor.municipality_code,
            entry=entry_from_resident(r, _head_name(session, r)),
            issuer=_issuer(actor),
            options=options,
            requester=requester,
        ),
        signers=signers,
        issued_at=issued_at,
    )
    _audit_printed(session, actor, "removed_record_copy", printed, [r.resident_code], requester, restricted)
    return printed


def move_out_certificate(
    session: Session,
    actor: Actor,
    resident_code: str,
    *,
    signers: SignerProvider | None = None,
    today: date | None = None,
    issued_at: datetime | None = None,
) -> IssuedPdf:
    """転出証明書 of the person's newest 転出 here, listing everyone who moved out with them."""
    code = _valid_code(resident_code)
    records_here(session, actor, code)  # 403/404 before anything else
    cert = session.scalars(
        select(MoveOutCertificate)
        .where(
            MoveOutCertificate.resident_code == code,
            MoveOutCertificate.role == "issued",
            MoveOutCertificate.holder_municipality_code == actor.municipality_code,
        )
        .order_by(MoveOutCertificate.issued_at.desc())
        .limit(1)
    ).first()
    if cert is None:
        raise RegisterError("resident_code", "move_out_required", "no 転出 of this person was recorded here")
    group = str(cert.payload.get("group_id", ""))
    together = list(
        session.scalars(
            select(MoveOutCertificate).where(
                MoveOutCertificate.role == "issued",
                MoveOutCertificate.holder_municipality_code == actor.municipality_code,
                MoveOutCertificate.planned_move_on == cert.planned_move_on,
                MoveOutCertificate.notified_on == cert.notified_on,
            )
        )
    )
    codes = [code] + sorted(
        {c.resident_code for c in together if str(c.payload.get("group_id", "")) == group and group} - {code}
    )
    persons = [_removed(session, actor, c) for c in codes]
    # The person themselves carries the certificate to the new municipality: no third party here.
    restricted = _check_restriction(
        session, actor, persons, Requester.SELF, "move_out_certificate", _today(today)
    )
    head = str(cert.payload.get("head_name") or "") or None
    printed = layouts.issue_move_out_certificate(
        session,
        layouts.MoveOutCertificateRequest(
            municipality_code=actor.municipality_code,
            entries=[_as_before_move(entry_from_resident(p, head)) for p in persons],
            destination_address=str(cert.payload.get("destination_address", "")),
            planned_move_on=cert.planned_move_on,
            notified_on=cert.notified_on,
            issuer=_issuer(actor),
        ),
        signers=signers,
        issued_at=issued_at,
    )
    _audit_printed(session, actor, "move_out_certificate", printed, codes, Requester.SELF, restricted)
    return printed


def _as_before_move(entry: ResidentEntry) -> ResidentEntry:
    # A 転出証明書 shows the record as it stood, not its 消除 (the layout prints no removal items).
    return replace(entry, removed_reason=None, removed_on=None)


def seal_certificate(
    session: Session,
    actor: Actor,
    resident_code: str,
    *,
    requester: Requester = Requester.SELF,
    signers: SignerProvider | None = None,
    today: date | None = None,
    issued_at: datetime | None = None,
) -> IssuedPdf:
    """印鑑登録証明書 with the registered seal's image (the 印鑑登録証 is the requester's authority)."""
    requester = Requester(requester)
    r = _active(session, actor, resident_code)
    restricted = _check_restriction(session, actor, [r], requester, "seal_certificate", _today(today))
    registration = seals.active_seal(session, r.resident_code, actor=actor)
    if registration is None:
        raise RegisterError("resident_code", "no_seal", "the person has no registered seal")
    printed = layouts.issue_seal_certificate(
        session,
        layouts.SealCertificateRequest(
            municipality_code=actor.municipality_code,
            entry=entry_from_resident(r, _head_name(session, r)),
            seal_image=registration.image_png,
            registration_number=seals.format_card_number(registration.card_number),
            issuer=_issuer(actor),
        ),
        signers=signers,
        issued_at=issued_at,
    )
    _audit_printed(session, actor, "seal_certificate", printed, [r.resident_code], requester, restricted)
    return printed


def tax_certificate(
    session: Session,
    actor: Actor,
    resident_code: str,
    fiscal_year: int,
    *,
    requester: Requester = Requester.SELF,
    signers: SignerProvider | None = None,
    today: date | None = None,
    issued_at: datetime | None = None,
) -> IssuedPdf:
    """所得・課税証明書 of ``fiscal_year`` (the newest version of the assessment)."""
    requester = Requester(requester)
    records = records_here(session, actor, resident_code)
    # A person taxed here on 1 January may have left since: the 除票 is enough.
    records.sort(key=lambda r: (r.status == ResidentStatus.ACTIVE.value, r.removed_at or r.updated_at))
    r = records[-1]
    restricted = _check_restriction(session, actor, [r], requester, "tax_certificate", _today(today))
    row = taxes.tax_assessment(session, r.resident_code, fiscal_year, actor=actor)
    if row is None:
        raise RegisterError("fiscal_year", "no_assessment", "no assessment of this person for that year")
    printed = layouts.issue_tax_certificate(
        session,
        layouts.TaxCertificateRequest(
            municipality_code=actor.municipality_code,
            entry=entry_from_resident(r, _head_name(session, r)),
            fiscal_year=row.fiscal_year,
            taxable_income=row.taxable_income,
            tax_amount=row.tax_amount,
            issuer=_issuer(actor),
        ),
        signers=signers,
        issued_at=issued_at,
    )
    _audit_printed(session, actor, "tax_certificate", printed, [r.resident_code], requester, restricted)
    return printed

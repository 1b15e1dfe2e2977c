"""`kiban ca`: the CA core of the JPKI analogue — init (key ceremony), status, crl (publish now).

Keys: files in ``<data>/keys/`` for the embedded demo, a PKCS#11 token when
``KIBAN_PKCS11_LIBRARY`` is set (see :func:`kiban.jpki.keys.keystore_from_settings`).
"""

from __future__ import annotations

from pathlib import Path

import typer
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

app = typer.Typer(help="Certificate authorities (公的個人認証 / LGPKI analogue).", no_args_is_help=True)

DATA_OPTION = typer.Option(None, "--data", help="Data directory (SQLite file and keys/ live here).")
DEFAULT_BASE_URL = "http://127.0.0.1:8000"


def _open(data: Path | None) -> tuple[sessionmaker[Session], object]:
    from kiban.core.config import load_settings
    from kiban.core.database import make_engine, session_factory, upgrade
    from kiban.jpki.keys import KeyStoreError, keystore_from_settings

    settings = load_settings(data)
    try:
        keystore = keystore_from_settings(settings)
    except KeyStoreError as error:
        typer.echo(f"refused: {error}", err=True)
        raise typer.Exit(1) from None
    settings.ensure_dirs()
    upgrade(settings.database_url)
    return session_factory(make_engine(settings.database_url)), keystore


@app.command("init")
def init(
    data: Path | None = DATA_OPTION,
    base_url: str = typer.Option(
        DEFAULT_BASE_URL, "--base-url", help="Public URL written into certificates."
    ),
    algorithm: str = typer.Option("rsa2048", "--algorithm", help="CA key type: rsa2048 or p256."),
) -> None:
    """Key ceremony (鍵生成式典): make the CA keys and certificates; prints their fingerprints.

    Idempotent: existing CAs are listed, never regenerated; a stray key without its CA is refused.
    """
    from kiban.core.database import transaction
    from kiban.jpki.keys import KeyStore
    from kiban.jpki.models import CertificateAuthority
    from kiban.jpki.service import CaError, ca_certificate, fingerprint, init_hierarchies

    factory, keystore = _open(data)
    assert isinstance(keystore, KeyStore)
    try:
        with transaction(factory) as session:
            before = set(session.scalars(select(CertificateAuthority.id)))
            cas = init_hierarchies(session, keystore, base_url, algorithm=algorithm)
            for ca in cas:
                state = "existing" if ca.id in before else "created"
                typer.echo(
                    f"{ca.id:18} {state:8} {ca.key_algorithm:8} SHA-256 {fingerprint(ca_certificate(ca))}"
                )
    except (CaError, ValueError) as error:
        typer.echo(f"refused: {error}", err=True)
        raise typer.Exit(1) from None


@app.command("status")
def status(data: Path | None = DATA_OPTION) -> None:
    """Each CA: certificates by status, last CRL number and when the next CRL is due."""
    from kiban.core.database import transaction
    from kiban.jpki.models import Certificate, CertificateAuthority, CrlPublication

    factory, _ = _open(data)
    with transaction(factory) as session:
        cas = session.scalars(select(CertificateAuthority).order_by(CertificateAuthority.id)).all()
        if not cas:
            typer.echo("no CA: run `kiban ca init`")
            raise typer.Exit(1)
        counts: dict[tuple[str, str], int] = {
            (ca_id, st): n
            for ca_id, st, n in session.execute(
                select(Certificate.ca_id, Certificate.status, func.count()).group_by(
                    Certificate.ca_id, Certificate.status
                )
            )
        }
        for ca in cas:
            last = session.scalar(
                select(CrlPublication)
                .where(CrlPublication.ca_id == ca.id, CrlPublication.partition == 0)
                .order_by(CrlPublication.crl_number.desc())
                .limit(1)
            )
            crl = f"CRL #{last.crl_number} next {last.next_update:%Y-%m-%dT%H:%MZ}" if last else "no CRL yet"
            typer.echo(
                f"{ca.id:18} good {counts.get((ca.id, 'good'), 0):>8} revoked "
                f"{counts.get((ca.id, 'revoked'), 0):>8} hold {counts.get((ca.id, 'hold'), 0):>6}  {crl}"
            )


@app.command("crl")
def crl(
    data: Path | None = DATA_OPTION,
    ca_id: list[str] = typer.Option([], "--ca", help="Only this CA (repeatable); default every CA."),
) -> None:
    """Publish CRLs now (full, and partitions past the threshold); exit 1 if a check fails."""
    from kiban.core.database import transaction, utcnow
    from kiban.jpki.crl import publish_crl
    from kiban.jpki.keys import KeyStore
    from kiban.jpki.models import CertificateAuthority
    from kiban.jpki.service import CaError

    factory, keystore = _open(data)
    assert isinstance(keystore, KeyStore)
    failed = False
    try:
        with transaction(factory) as session:
            ids = ca_id or list(
                session.scalars(select(CertificateAuthority.id).order_by(CertificateAuthority.id))
            )
            if not ids:
                typer.echo("no CA: run `kiban ca init`", err=True)
                raise typer.Exit(1)
            now = utcnow()
            for one in ids:
                for item in publish_crl(session, keystore, one, now):
                    ok = item.check is None or item.check.ok
                    failed |= not ok
                    typer.echo(
                        f"{item.ca_id:18} partition {item.partition:>4} CRL #{item.crl_number} "
                        f"entries {item.entries:>8} {'complete' if ok else 'INCOMPLETE'} {item.url}"
                    )
    except CaError as error:
        typer.echo(f"refused: {error}", err=True)
        raise typer.Exit(1) from None
    if failed:
        raise typer.Exit(1)


@app.command("ocsp-signer")
def ocsp_signer(
    data: Path | None = DATA_OPTION,
    ca_id: list[str] = typer.Option([], "--ca", help="Only this issuing CA (repeatable); default all."),
    rotate: bool = typer.Option(
        False, "--rotate", help="Make a new responder key even if the current one is fine."
    ),
) -> None:
    """Delegated OCSP signers: make one per issuing CA, or rotate it 7 days before expiry (or now).

    Needs the CA key (it certifies the responder key); answering OCSP does not. Exit 1 when a CA
    could not get a signer it needed (its current one, if any, keeps answering until it expires).
    """
    from kiban.core.database import transaction, utcnow
    from kiban.jpki import ocsp
    from kiban.jpki.keys import KeyStore
    from kiban.jpki.service import CaError

    factory, keystore = _open(data)
    assert isinstance(keystore, KeyStore)
    try:
        with transaction(factory) as session:
            outcomes = ocsp.ensure_signers(
                session, keystore, utcnow().replace(microsecond=0), force=rotate, ca_ids=ca_id
            )
    except CaError as error:
        typer.echo(f"refused: {error}", err=True)
        raise typer.Exit(1) from None
    if not outcomes:
        typer.echo("no issuing CA: run `kiban ca init`", err=True)
        raise typer.Exit(1)
    for item in outcomes:
        until = f"{item.not_after:%Y-%m-%dT%H:%MZ}" if item.not_after else "-"
        typer.echo(f"{item.ca_id:18} {item.action:8} serial {item.serial or '-'} until {until} {item.detail}")
    if any(item.action == "failed" for item in outcomes):
        raise typer.Exit(1)


@app.command("ocsp-refresh")
def ocsp_refresh(
    data: Path | None = DATA_OPTION,
    ca_id: list[str] = typer.Option([], "--ca", help="Only this issuing CA (repeatable); default all."),
    everything: bool = typer.Option(False, "--all", help="Re-sign every response, due or not."),
) -> None:
    """Pre-sign OCSP responses: new certificates, changed statuses, and those near nextUpdate.

    `kiban serve` does this every 10 minutes; run it from cron where no server does. Exit 1 when
    a response could not be signed (it is then a tombstone: the responder signs on demand or
    answers tryLater, never a stale status).
    """
    from kiban.core.database import transaction, utcnow
    from kiban.jpki import ocsp
    from kiban.jpki.keys import KeyStore
    from kiban.jpki.service import CaError

    factory, keystore = _open(data)
    assert isinstance(keystore, KeyStore)
    ahead = ocsp.RESPONSE_VALIDITY + ocsp.RESPONSE_VALIDITY if everything else ocsp.REFRESH_AHEAD
    try:
        with transaction(factory) as session:
            stats = ocsp.refresh_responses(
                session, keystore, utcnow().replace(microsecond=0), ahead=ahead, ca_ids=ca_id
            )
    except CaError as error:
        typer.echo(f"refused: {error}", err=True)
        raise typer.Exit(1) from None
    for item in stats.signers:
        typer.echo(f"{item.ca_id:18} signer {item.action:8} serial {item.serial or '-'} {item.detail}")
    typer.echo(f"signed {stats.signed} failed {stats.failed}")
    if stats.failed:
        raise typer.Exit(1)

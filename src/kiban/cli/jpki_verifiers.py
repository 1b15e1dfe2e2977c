"""`kiban verifiers`: the JPKI verifier registry from the command line (検証者の登録).

add / list / token (issue; printed once) / rotate / revoke / suspend / resume. Every change is an
audit entry with the operator named by ``--actor``. The web screen /jpki/verifiers does the same.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import typer
from sqlalchemy.orm import Session, sessionmaker

app = typer.Typer(help="JPKI verifier registry (検証者): services, API tokens, usage.", no_args_is_help=True)

DATA_OPTION = typer.Option(None, "--data", help="Data directory (the SQLite file lives here).")
ACTOR_OPTION = typer.Option("cli-operator", "--actor", help="Who acts (written to the audit log).")


def _open(data: Path | None) -> sessionmaker[Session]:
    from kiban.core.config import load_settings
    from kiban.core.database import make_engine, session_factory, upgrade

    settings = load_settings(data)
    settings.ensure_dirs()
    upgrade(settings.database_url)
    return session_factory(make_engine(settings.database_url))


def _refused(error: Exception) -> typer.Exit:
    field, rule = getattr(error, "field", "?"), getattr(error, "rule", "?")
    message = getattr(error, "message", str(error))
    typer.echo(f"refused: {field}: {message} (rule: {rule})", err=True)
    return typer.Exit(1)


@app.command("add")
def add(
    code: str = typer.Argument(..., help="Verifier code: 2-32 of a-z, 0-9, '_' and '-'."),
    name: str = typer.Option(..., "--name", help="名称."),
    category: str = typer.Option(
        ..., "--category", help="national_body, local_government, certified_business or delegate."
    ),
    service: list[str] = typer.Option(
        ..., "--service", help="revocation, links, basic_info (repeat for several)."
    ),
    rate: float = typer.Option(50.0, "--ocsp-rate", help="OCSP requests per second allowed."),
    principal: str | None = typer.Option(None, "--principal", help="The principal of a delegate (委託元)."),
    data: Path | None = DATA_OPTION,
    actor: str = ACTOR_OPTION,
) -> None:
    """Register a verifier."""
    from kiban.core.database import transaction
    from kiban.jpki.verifiers import service as verifiers

    factory = _open(data)
    try:
        with transaction(factory) as session:
            verifiers.create_verifier(
                session,
                code=code,
                name=name,
                category=category,
                services=service,
                ocsp_rate_per_second=rate,
                principal_code=principal,
                actor=actor,
            )
    except ValueError as error:
        raise _refused(error) from None
    typer.echo(f"registered {code}")


@app.command("list")
def list_(data: Path | None = DATA_OPTION) -> None:
    """The registry: code, category, services, status, requests today and over 30 days."""
    from kiban.core.database import transaction
    from kiban.jpki.verifiers import service as verifiers

    factory = _open(data)
    with transaction(factory) as session:
        rows = verifiers.list_verifiers(session)
    if not rows:
        typer.echo("no verifiers")
    for v in rows:
        typer.echo(
            f"{v.code:20} {v.category:18} {','.join(v.services):28} {v.status:9} "
            f"today {v.requests_today:>10} 30d {v.requests_30_days:>12}"
        )


@app.command("token")
def token(
    code: str = typer.Argument(...),
    label: str = typer.Option("", "--label"),
    days: int | None = typer.Option(None, "--days", min=1, max=3660, help="Valid for this many days."),
    data: Path | None = DATA_OPTION,
    actor: str = ACTOR_OPTION,
) -> None:
    """Issue an API token; it is printed once and only its hash is kept."""
    from kiban.core.database import transaction, utcnow
    from kiban.jpki.verifiers import service as verifiers

    factory = _open(data)
    try:
        with transaction(factory) as session:
            issued = verifiers.issue_token(
                session,
                code,
                actor=actor,
                label=label,
                expires_at=None if days is None else utcnow() + timedelta(days=days),
            )
    except ValueError as error:
        raise _refused(error) from None
    typer.echo(f"token {issued.id} for {code} (shown once): {issued.token}")


@app.command("rotate")
def rotate(
    code: str = typer.Argument(...),
    token_id: int = typer.Argument(...),
    overlap_hours: int = typer.Option(24, "--overlap-hours", min=0, max=168),
    data: Path | None = DATA_OPTION,
    actor: str = ACTOR_OPTION,
) -> None:
    """Replace a token; the old one keeps working for the overlap."""
    from kiban.core.database import transaction
    from kiban.jpki.verifiers import service as verifiers

    factory = _open(data)
    try:
        with transaction(factory) as session:
            issued = verifiers.rotate_token(
                session, code, token_id, actor=actor, overlap=timedelta(hours=overlap_hours)
            )
    except ValueError as error:
        raise _refused(error) from None
    typer.echo(f"token {issued.id} for {code} replaces {token_id} (shown once): {issued.token}")


@app.command("revoke")
def revoke(
    code: str = typer.Argument(...),
    token_id: int = typer.Argument(...),
    data: Path | None = DATA_OPTION,
    actor: str = ACTOR_OPTION,
) -> None:
    """Revoke a token at once."""
    from kiban.core.database import transaction
    from kiban.jpki.verifiers import service as verifiers

    factory = _open(data)
    try:
        with transaction(factory) as session:
            verifiers.revoke_token(session, code, token_id, actor=actor)
    except ValueError as error:
        raise _refused(error) from None
    typer.echo(f"token {token_id} of {code} revoked")


@app.command("suspend")
def suspend(
    code: str = typer.Argument(...),
    reason: str = typer.Option(..., "--reason"),
    data: Path | None = DATA_OPTION,
    actor: str = ACTOR_OPTION,
) -> None:
    """利用停止: every token of the verifier and of its delegates stops working."""
    from kiban.core.database import transaction
    from kiban.jpki.verifiers import service as verifiers

    factory = _open(data)
    try:
        with transaction(factory) as session:
            verifiers.suspend_verifier(session, code, reason=reason, actor=actor)
    except ValueError as error:
        raise _refused(error) from None
    typer.echo(f"{code} suspended")


@app.command("resume")
def resume(
    code: str = typer.Argument(...), data: Path | None = DATA_OPTION, actor: str = ACTOR_OPTION
) -> None:
    """Lift a suspension."""
    from kiban.core.database import transaction
    from kiban.jpki.verifiers import service as verifiers

    factory = _open(data)
    try:
        with transaction(factory) as session:
            verifiers.resume_verifier(session, code, actor=actor)
    except ValueError as error:
        raise _refused(error) from None
    typer.echo(f"{code} resumed")

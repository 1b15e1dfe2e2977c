"""`kiban document`: check a signed document (PAdES signature, signed QR code, ledger).

``kiban document qr PAYLOAD [--data DIR]`` checks a scanned QR code online the same way.

``kiban document verify FILE.pdf [--data DIR] [--offline] [--trust-root PEM] [--json]``: exit 0 and
"valid" with signer, municipality and serial; exit 1 and one line per failed check otherwise.
The trust anchor is ``--trust-root``, else ``DIR/pki/ca/lgpki-root.pem`` (written by the demo),
else the LGPKI root in DIR's database. ``--offline`` never opens the ledger or certificate
status (the signature, chain and QR are still checked).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from cryptography import x509

app = typer.Typer(help="Issued documents (証明書): verify signed PDFs.", no_args_is_help=True)

DATA_OPTION = typer.Option(None, "--data", help="Data directory (the SQLite file and pki/ live here).")


@app.callback()
def main() -> None:
    """Issued documents (証明書)."""


def _load_roots(path: Path) -> list[x509.Certificate]:
    data = path.read_bytes()
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]


@app.command("verify")
def verify(
    file: Path = typer.Argument(..., help="The signed PDF."),
    data: Path | None = DATA_OPTION,
    offline: bool = typer.Option(False, "--offline", help="Do not consult the ledger or certificate status."),
    trust_root: Path | None = typer.Option(None, "--trust-root", help="LGPKI root certificate (PEM or DER)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Verify a signed document: signature, chain, modification, QR code, and (online) the ledger."""
    from kiban.core import pdfsign
    from kiban.core.config import load_settings

    try:
        size = file.stat().st_size
        if size > pdfsign.MAX_PDF_BYTES:
            typer.echo(f"refused: file: larger than {pdfsign.MAX_PDF_BYTES} bytes (rule: max_size)", err=True)
            raise typer.Exit(1)
        pdf = file.read_bytes()
    except OSError as exc:
        typer.echo(f"refused: file: cannot read {file}: {exc.strerror} (rule: readable)", err=True)
        raise typer.Exit(1) from None
    settings = load_settings(data)
    roots: list[x509.Certificate] = []
    default_root = settings.data_dir / "pki" / "ca" / "lgpki-root.pem"
    try:
        if trust_root is not None:
            roots = _load_roots(trust_root)
        elif default_root.is_file():
            roots = _load_roots(default_root)
    except (OSError, ValueError) as exc:
        typer.echo(f"refused: trust_root: not a certificate ({exc}) (rule: certificate)", err=True)
        raise typer.Exit(1) from None

    factory = None
    if not offline or not roots:
        from kiban.core.database import make_engine, session_factory

        if settings.database_url_override is None and not (settings.data_dir / "kiban.sqlite").is_file():
            typer.echo(
                f"refused: data: no database in {settings.data_dir}; pass --data, or --offline with "
                "--trust-root (rule: database)",
                err=True,
            )
            raise typer.Exit(1)
        factory = session_factory(make_engine(settings.database_url))
    if factory is None:
        result = pdfsign.verify_pdf(pdf, trust_roots=roots)
    else:
        with factory() as session:
            if not roots:
                roots = pdfsign.trust_roots_from_db(session)
            result = pdfsign.verify_pdf(pdf, trust_roots=roots, online_session=None if offline else session)
    if as_json:
        typer.echo(json.dumps(result.as_dict(), ensure_ascii=False, indent=2))
    elif result.ok:
        typer.echo("valid")
        typer.echo(f"signer: {result.signer}")
        typer.echo(f"municipality: {result.municipality}")
        typer.echo(f"serial: {result.serial}")
        typer.echo(f"document type: {result.document_type}")
        typer.echo(f"issued on: {result.issued_on}")
        typer.echo(
            "checks: " + ("offline and online (ledger, certificate status)" if result.online else "offline")
        )
    else:
        _print_failure(result)
    raise typer.Exit(0 if result.ok else 1)


def _print_failure(result: object) -> None:
    typer.echo("invalid")
    for problem in getattr(result, "problems", ()):
        typer.echo(f"failed: {problem.code}: {problem.message}")


@app.command("qr")
def qr(
    payload: str = typer.Argument(..., help="The scanned QR text (KQ1:…)."),
    data: Path | None = DATA_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Check a scanned document QR code online: signature, organisation certificate, ledger."""
    from kiban.core import pdfsign
    from kiban.core.config import load_settings
    from kiban.core.database import make_engine, session_factory

    settings = load_settings(data)
    if settings.database_url_override is None and not (settings.data_dir / "kiban.sqlite").is_file():
        typer.echo(f"refused: data: no database in {settings.data_dir} (rule: database)", err=True)
        raise typer.Exit(1)
    with session_factory(make_engine(settings.database_url))() as session:
        result = pdfsign.verify_qr(payload, session=session)
    if as_json:
        typer.echo(json.dumps(result.as_dict(), ensure_ascii=False, indent=2))
    elif result.ok:
        typer.echo("valid")
        typer.echo(f"signer: {result.signer}")
        typer.echo(f"municipality: {result.municipality}")
        typer.echo(f"serial: {result.serial}")
        typer.echo(f"document type: {result.document_type}")
        typer.echo(f"issued on: {result.issued_on}")
    else:
        _print_failure(result)
    raise typer.Exit(0 if result.ok else 1)

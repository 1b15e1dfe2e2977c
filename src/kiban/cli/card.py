"""`kiban card`: the holder's side of the software My Number card (inspect, sign, change-pin).

The card is a file made by the manufacturer and handed over at the counter; these commands talk to
the card only, never to the platform (as a card reader on the holder's desk would). The file
passphrase comes from ``--passphrase``, else ``KIBAN_CARD_PASSPHRASE``, else a hidden prompt; PINs
from ``--pin`` (for scripts and tests) or a hidden prompt.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import typer
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kiban.cards.softcard import KEY_KINDS, PIN_JA, PIN_KINDS, CardError, SoftCard

app = typer.Typer(
    help="The software My Number card (個人番号カード): inspect, sign, change PINs.", no_args_is_help=True
)

CARD_ARG = typer.Argument(..., help="The card file.", exists=False, dir_okay=False)
PASS_OPTION = typer.Option(None, "--passphrase", help="Card file passphrase (else KIBAN_CARD_PASSPHRASE).")


def _open(path: Path, passphrase: str | None) -> SoftCard:
    if not path.is_file():
        # Before the passphrase prompt: a missing file is not worth a secret typed in.
        typer.echo(f"refused: card: {path} is not a card file (rule: file_exists)", err=True)
        raise typer.Exit(1)
    secret = (
        passphrase or os.environ.get("KIBAN_CARD_PASSPHRASE") or typer.prompt("passphrase", hide_input=True)
    )
    try:
        return SoftCard.open(path, secret)
    except CardError as exc:
        _refuse(exc)
        raise


def _refuse(exc: CardError) -> None:
    left = f" ({exc.tries_left} tries left)" if exc.tries_left is not None else ""
    typer.echo(f"refused: {exc.field}: {exc.rule}{left} — {exc}", err=True)
    raise typer.Exit(2 if exc.rule in ("pin_wrong", "pin_locked") else 1)


def _fingerprint(card: SoftCard, kind: str) -> str | None:
    key = card.public_key(kind)  # type: ignore[arg-type]
    if key is None:
        return None
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


@app.command("inspect")
def inspect(
    path: Path = CARD_ARG,
    passphrase: str | None = PASS_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """What the card shows without a PIN: card face (no 個人番号), PIN counters, keys, certificates."""
    card = _open(path, passphrase)
    info: dict[str, object] = {
        "face": card.face,
        "algorithm": card.algorithm,
        "pins": {
            s.kind: {"set": s.is_set, "tries_left": s.tries_left, "locked": s.locked}
            for s in card.pin_status()
        },
        "keys": {},
        "area": sorted(card.area()),
    }
    keys: dict[str, object] = {}
    for kind in KEY_KINDS:
        der = card.certificate(kind)
        cert = x509.load_der_x509_certificate(der) if der else None
        keys[kind] = {
            "public_key_sha256": _fingerprint(card, kind),
            "certificate_serial": f"{cert.serial_number:040x}" if cert else None,
            "not_after": cert.not_valid_after_utc.isoformat() if cert else None,
        }
    info["keys"] = keys
    if as_json:
        typer.echo(json.dumps(info, ensure_ascii=False, indent=2))
        return
    face = card.face
    typer.echo(f"カード {face['card_id']}  {face['name']}  有効期限 {face['expires_on']}")
    typer.echo(f"  住所 {face['address']}  生年月日 {face['birth_date']}")
    for s in card.pin_status():
        state = "未設定" if not s.is_set else ("ロック" if s.locked else f"残り{s.tries_left}回")
        typer.echo(f"  {PIN_JA[s.kind]}: {state}")
    for name, data in keys.items():
        typer.echo(f"  {name}: {json.dumps(data)}")


@app.command("sign")
def sign(
    path: Path = CARD_ARG,
    passphrase: str | None = PASS_OPTION,
    challenge: str | None = typer.Option(
        None, "--challenge", help="Hex challenge: 利用者証明 (user-auth key)."
    ),
    document: Path | None = typer.Option(None, "--document", help="File to sign: 電子署名 (signature key)."),
    pin: str | None = typer.Option(None, "--pin", help="The PIN (else a hidden prompt)."),
) -> None:
    """Sign a challenge (user-authentication PIN) or a document (signature PIN); prints base64."""
    if (challenge is None) == (document is None):
        typer.echo("refused: give exactly one of --challenge or --document", err=True)
        raise typer.Exit(1)
    card = _open(path, passphrase)
    try:
        if challenge is not None:
            try:
                data = bytes.fromhex(challenge)
            except ValueError:
                typer.echo("refused: challenge: hex — must be hexadecimal", err=True)
                raise typer.Exit(1) from None
            secret = pin or typer.prompt(PIN_JA["user_auth"], hide_input=True)
            signature = card.sign_challenge(secret, data)
        else:
            assert document is not None
            secret = pin or typer.prompt(PIN_JA["signature"], hide_input=True)
            signature = card.sign_document(secret, document.read_bytes())
    except CardError as exc:
        _refuse(exc)
        return
    typer.echo(base64.b64encode(signature).decode("ascii"))


@app.command("change-pin")
def change_pin(
    path: Path = CARD_ARG,
    passphrase: str | None = PASS_OPTION,
    kind: str = typer.Option("user_auth", "--kind", help=f"One of {', '.join(PIN_KINDS)}."),
    old: str | None = typer.Option(None, "--old", help="Current PIN (else a hidden prompt)."),
    new: str | None = typer.Option(None, "--new", help="New PIN (else a hidden prompt, asked twice)."),
) -> None:
    """Change a PIN on the card (the old one must be right; the new one must follow its rule)."""
    if kind not in PIN_KINDS:
        typer.echo(f"refused: kind: pin_kind — one of {', '.join(PIN_KINDS)}", err=True)
        raise typer.Exit(1)
    card = _open(path, passphrase)
    current = old or typer.prompt(f"現在の{PIN_JA[kind]}", hide_input=True)
    wanted = new or typer.prompt(f"新しい{PIN_JA[kind]}", hide_input=True, confirmation_prompt=True)
    try:
        card.change_pin(kind, current, wanted)
    except CardError as exc:
        _refuse(exc)
        return
    typer.echo(f"changed: {PIN_JA[kind]}")

"""`kiban demo` builds a consistent world and says so in report.md."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from sqlalchemy import func, select
from typer.testing import CliRunner

from kiban.cli.main import app
from kiban.core import audit
from kiban.core.config import load_settings
from kiban.core.database import make_engine, session_factory
from kiban.core.identifiers import IndividualNumberCipher, validate_individual_number, validate_resident_code
from kiban.demo.run import DemoError, prepare_directory, run_demo
from kiban.demo.world import DEMO_MUNICIPALITIES, allocation
from kiban.register.models import Resident


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("demo") / "world"
    run_demo(directory, 300, seed=7)
    return directory


def test_every_resident_has_valid_identifiers_from_the_key(
    demo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kiban.register.models import ChangeRecord

    monkeypatch.delenv("KIBAN_DATABASE_URL", raising=False)
    settings = load_settings(demo_dir)
    cipher = IndividualNumberCipher.from_key_file(settings.keys_dir / "numbering.key")
    engine = make_engine(settings.database_url)
    with session_factory(engine)() as s:
        rows = s.execute(
            select(Resident.resident_code, Resident.individual_number, Resident.municipality_code)
        ).all()
        births = s.scalar(select(func.count()).where(ChangeRecord.kind == "birth"))
    engine.dispose()
    codes = {r.resident_code for r in rows}
    # 300 loaded, plus the year's births; movers keep their code (除票 + new record).
    assert len(codes) == 300 + (births or 0)
    assert {r.municipality_code for r in rows} == set(DEMO_MUNICIPALITIES)
    for code, number, _ in rows:
        assert validate_resident_code(code) == code
        assert number is not None and validate_individual_number(number) == number
        assert cipher.resident_code_for(number) == code


def test_report_tells_the_counts(demo_dir: Path) -> None:
    report = (demo_dir / "report.md").read_text()
    assert "## 1. The world" in report
    assert "岐阜市" in report and "新宿区" in report and "坂祝町" in report
    assert "households:" in report and "residents: 300" in report
    assert "300 records carry one" in report
    assert "## Timings" in report


def test_audit_log_of_the_demo_verifies(demo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KIBAN_DATABASE_URL", raising=False)
    settings = load_settings(demo_dir)
    engine = make_engine(settings.database_url)
    with session_factory(engine)() as s:
        report = audit.verify_data_dir(s, settings, seal=False)
        entries = s.scalar(select(func.count()).select_from(audit.AuditEntry))
    engine.dispose()
    assert report.ok, report.summary()
    assert entries is not None and entries >= 300


def test_credentials_file_is_private(demo_dir: Path) -> None:
    path = demo_dir / "demo-credentials.txt"
    assert path.stat().st_mode & 0o077 == 0
    assert "clerk212016" in path.read_text()


def test_allocation_is_exact_and_covers_every_town() -> None:
    for total in (100, 301, 3000, 99_999):
        shares = allocation(total)
        assert sum(shares.values()) == total
        assert all(n >= 20 for n in shares.values())
    assert allocation(3000)["212016"] > allocation(3000)["215015"]


def test_refuses_a_directory_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "thesis.docx").write_text("not ours")
    with pytest.raises(DemoError, match="data_dir_is_demo"):
        prepare_directory(tmp_path)
    assert (tmp_path / "thesis.docx").exists()


def test_cli_rejects_bad_arguments(tmp_path: Path) -> None:
    runner = CliRunner()
    for args in (["--residents", "0"], ["--residents", "abc"], ["--residents", "99999999999"]):
        result = runner.invoke(app, ["demo", "--data", str(tmp_path / "x"), *args])
        assert result.exit_code == 2, result.output
        assert "--residents" in result.output
    assert not (tmp_path / "x").exists()
    (tmp_path / "f").write_text("a file")
    result = runner.invoke(app, ["demo", "--data", str(tmp_path / "f"), "--residents", "100"])
    assert result.exit_code == 2
    assert "data_dir_is_directory" in result.output


def test_sample_documents_read_back_and_verify(demo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pypdf import PdfReader

    from kiban.core.documents import KeyDirectorySigners, verify_document
    from kiban.core.models.documents import IssuedDocument

    names = {p.name for p in (demo_dir / "documents").glob("*.pdf") if not p.name.startswith("kiosk-")}
    assert names == {"juminhyo-household.pdf", "kisai-jiko.pdf", "inkan-toroku.pdf", "shotoku-kazei.pdf"}
    texts = {
        name: "".join(page.extract_text() for page in PdfReader(demo_dir / "documents" / name).pages)
        for name in names
    }
    assert "住民票" in texts["juminhyo-household.pdf"] and "令和" in texts["juminhyo-household.pdf"]
    assert "印鑑登録証明書" in texts["inkan-toroku.pdf"]
    assert "令和7年度" in texts["shotoku-kazei.pdf"]
    report = (demo_dir / "report.md").read_text()
    monkeypatch.delenv("KIBAN_DATABASE_URL", raising=False)
    settings = load_settings(demo_dir)
    engine = make_engine(settings.database_url)
    with session_factory(engine)() as s:
        for name in names:
            serial = next(line for line in report.splitlines() if f"`{name}`" in line).rsplit("serial ", 1)[1]
            assert serial in texts[name].replace(" ", "")
            row = s.scalars(select(IssuedDocument).where(IssuedDocument.serial == serial)).one()
            assert row is not None
            ok = verify_document(
                s,
                serial,
                row.content_hash,
                row.verification_code,
                signers=KeyDirectorySigners(settings.keys_dir),
            )
            assert ok.valid
            forged = verify_document(
                s, serial, "0" * 64, row.verification_code, signers=KeyDirectorySigners(settings.keys_dir)
            )
            assert not forged.valid
    engine.dispose()


def test_a_year_of_life_leaves_a_consistent_register(demo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kiban.register.models import ChangeRecord

    report = (demo_dir / "report.md").read_text()
    assert "## 3. Life" in report
    monkeypatch.delenv("KIBAN_DATABASE_URL", raising=False)
    settings = load_settings(demo_dir)
    engine = make_engine(settings.database_url)
    with session_factory(engine)() as s:
        kinds = dict(s.execute(select(ChangeRecord.kind, func.count()).group_by(ChangeRecord.kind)).all())
        moved_in = s.scalars(select(ChangeRecord.resident_id).where(ChangeRecord.kind == "move_in")).all()
        records = s.execute(select(Resident.resident_code, Resident.status, Resident.municipality_code)).all()
    engine.dispose()
    assert kinds.get("birth", 0) >= 1 and kinds.get("death", 0) >= 1
    assert kinds.get("move_out") == kinds.get("move_in") and len(moved_in) >= 1
    # One active record per 住民票コード; a mover has a 除票 in one town and an active record in another.
    active = [r.resident_code for r in records if r.status == "active"]
    assert len(active) == len(set(active))
    by_code: dict[str, list[tuple[str, str]]] = {}
    for code, status, town in records:
        by_code.setdefault(code, []).append((status, town))
    movers = [rows for rows in by_code.values() if len(rows) == 2]
    assert len(movers) == kinds["move_in"]
    for rows in movers:
        assert {status for status, _ in rows} == {"active", "removed"}
        assert rows[0][1] != rows[1][1]
    assert f"| 出生 | {kinds['birth']:,} |" in report


def test_the_network_chapter(demo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kiban.network import service as network

    report = (demo_dir / "report.md").read_text()
    assert "## 4. The network" in report
    assert "**refused** (rule `use_not_allowed`)" in report
    monkeypatch.delenv("KIBAN_DATABASE_URL", raising=False)
    settings = load_settings(demo_dir)
    engine = make_engine(settings.database_url)
    with session_factory(engine)() as s:
        status = network.replication_status(s)
        assert network.quarantined(s) == []
        mover = s.scalars(
            select(Resident.resident_code).where(
                Resident.status == "removed", Resident.removed_reason == "転出"
            )
        ).first()
        assert mover is not None
        # The national copy's newest version of a mover carries the new municipality's address.
        newest = network.national_history(s, mover)[-1]
        active = s.scalars(
            select(Resident).where(Resident.resident_code == mover, Resident.status == "active")
        ).one()
    engine.dispose()
    assert {r.municipality_code for r in status} <= set(DEMO_MUNICIPALITIES)
    assert sum(r.versions for r in status) > 0
    assert active.town in str(newest.address)


# --- pki/: real tools read what the CA wrote -------------------------------------------------------

OPENSSL = shutil.which("openssl")
PKILINT_BIN = Path(sys.executable).parent


def _pki_index(demo_dir: Path) -> list[dict[str, str | None]]:
    index: list[dict[str, str | None]] = json.loads((demo_dir / "pki" / "samples" / "index.json").read_text())
    return index


def _root_of(ca: str | None) -> str:
    return "lgpki-root" if str(ca).startswith("lgpki") else "jpki-root"


def test_pki_index_lists_each_story_with_its_expected_status(demo_dir: Path) -> None:
    index = _pki_index(demo_dir)
    by_file = {Path(str(e["file"])).stem: e for e in index}
    for name in ("good-user-auth", "good-organisation", "good-tls-server"):
        assert by_file[name]["status"] == "good" and by_file[name]["reason"] is None
    assert by_file["on-hold-lost-card"]["status"] == "on hold"
    assert by_file["revoked-key-compromise"]["reason"] == "keyCompromise"
    assert by_file["revoked-superseded"]["reason"] == "superseded"
    for entry in index:
        cert = x509.load_pem_x509_certificate((demo_dir / "pki" / str(entry["file"])).read_bytes())
        assert format(cert.serial_number, "040x") == entry["serial"]
        assert entry["status"] in {"good", "revoked", "on hold"}
        assert (entry["reason"] is None) == (entry["status"] == "good")


@pytest.mark.skipif(OPENSSL is None, reason="openssl not installed")
def test_openssl_verifies_every_sample_and_the_crl_tells_the_revoked(demo_dir: Path) -> None:
    pki = demo_dir / "pki"
    for entry in _pki_index(demo_dir):
        root, ca, cert = pki / "ca" / f"{_root_of(entry['ca'])}.pem", entry["ca"], pki / str(entry["file"])
        chain = subprocess.run(
            [
                str(OPENSSL),
                "verify",
                "-CAfile",
                str(root),
                "-untrusted",
                str(pki / "ca" / "all.pem"),
                str(cert),
            ],
            capture_output=True,
            text=True,
        )
        assert chain.returncode == 0, (entry, chain.stdout, chain.stderr)
        # With the issuing CA's CRL the revoked and held certificates are refused, the good pass.
        crl_pem = subprocess.run(
            [str(OPENSSL), "crl", "-inform", "DER", "-in", str(pki / "crl" / f"{ca}.crl")],
            capture_output=True,
            check=True,
        ).stdout
        root_crl = subprocess.run(
            [str(OPENSSL), "crl", "-inform", "DER", "-in", str(pki / "crl" / f"{_root_of(ca)}.crl")],
            capture_output=True,
            check=True,
        ).stdout
        crls = demo_dir / "crls.pem"
        crls.write_bytes(crl_pem + root_crl)
        checked = subprocess.run(
            [
                str(OPENSSL),
                "verify",
                "-crl_check_all",
                "-CRLfile",
                str(crls),
                "-CAfile",
                str(root),
                "-untrusted",
                str(pki / "ca" / "all.pem"),
                str(cert),
            ],
            capture_output=True,
            text=True,
        )
        if entry["status"] == "good":
            assert checked.returncode == 0, (entry, checked.stdout, checked.stderr)
        else:
            assert checked.returncode != 0 and "revoked" in checked.stdout + checked.stderr, entry
        crl_text = subprocess.run(
            [str(OPENSSL), "crl", "-inform", "DER", "-in", str(pki / "crl" / f"{ca}.crl"), "-noout", "-text"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        serial = format(int(str(entry["serial"]), 16), "X")
        serial = serial.zfill(len(serial) + len(serial) % 2)
        listed = f"Serial Number: {serial}" in crl_text
        assert listed == (entry["status"] != "good"), entry
        if listed:
            block = crl_text.split(f"Serial Number: {serial}")[1].split("Serial Number:")[0]
            expected = {
                "keyCompromise": "Key Compromise",
                "superseded": "Superseded",
                "certificateHold": "Certificate Hold",
                "affiliationChanged": "Affiliation Changed",
                "cessationOfOperation": "Cessation Of Operation",
            }[str(entry["reason"])]
            assert expected in block, (entry, block)


def test_pkilint_accepts_the_samples_and_crls(demo_dir: Path) -> None:
    cert_lint, crl_lint = PKILINT_BIN / "lint_pkix_cert", PKILINT_BIN / "lint_crl"
    if not cert_lint.exists() or not crl_lint.exists():
        pytest.skip("pkilint (PyPI) not installed")
    pki = demo_dir / "pki"
    for entry in _pki_index(demo_dir):
        result = subprocess.run(
            [str(cert_lint), "lint", "-s", "WARNING", str(pki / str(entry["file"]))],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, (entry["file"], result.stdout)
    for crl_file in sorted((pki / "crl").glob("*.crl")):
        result = subprocess.run(
            [str(crl_lint), "lint", "-t", "CRL", "-p", "PKIX", "-s", "WARNING", str(crl_file)],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, (crl_file.name, result.stdout)


def test_report_tells_the_certificates(demo_dir: Path) -> None:
    report = (demo_dir / "report.md").read_text()
    assert "## Certificates: key ceremony and issuance" in report
    assert "each checked complete: all complete" in report
    assert "2 revoked at the holder's request (keyCompromise)" in report


def test_the_network_chapter_writes_its_documents_export_and_api_provisions(
    demo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import csv
    import re

    from pypdf import PdfReader

    from kiban.network.models import Provision

    report = (demo_dir / "report.md").read_text()
    letter = demo_dir / "documents" / "network" / "kojin-bango-tsuchisho.pdf"
    copy = demo_dir / "documents" / "network" / "koiki-kofu-juminhyo.pdf"
    assert "個人番号" in "".join(page.extract_text() for page in PdfReader(letter).pages)
    assert "住民票" in "".join(page.extract_text() for page in PdfReader(copy).pages)
    assert "`documents/network/kojin-bango-tsuchisho.pdf`" in report and "広域交付" in report
    # The monthly 転入 CSV: counts only, and the total the report tells.
    [extract] = (demo_dir / "exports").glob("move-ins-*.csv")
    rows = list(csv.DictReader(extract.read_text(encoding="utf-8").splitlines()))
    assert rows and set(rows[0]) >= {"destination_municipality_code", "sex", "age_group", "count"}
    told = re.search(r"`exports/(move-ins-[0-9-]+\.csv)`, ([0-9]+) 転入", report)
    assert told is not None and told.group(1) == extract.name
    assert sum(int(r["count"]) for r in rows) == int(told.group(2)) > 0
    # Provisions through the HTTP API, logged like any other.
    assert "HTTP API (`POST /api/provision`, logged in as `pension`): 5 provided of 5" in report
    assert "answered **403** (rule `use_not_allowed`)" in report
    monkeypatch.delenv("KIBAN_DATABASE_URL", raising=False)
    engine = make_engine(load_settings(demo_dir).database_url)
    with session_factory(engine)() as s:
        refused = s.scalar(
            select(func.count()).where(
                Provision.agency_code == "nenkin", Provision.use_code == "passport_issue"
            )
        )
    engine.dispose()
    assert refused == 1


def test_kiosk_samples_verify_with_kiban_document_verify(
    demo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KIBAN_DATABASE_URL", raising=False)
    samples = sorted((demo_dir / "documents").glob("kiosk-*.pdf"))
    assert samples, "the kiosk chapter writes its sample documents"
    runner = CliRunner()
    for pdf in samples:
        online = runner.invoke(app, ["document", "verify", str(pdf), "--data", str(demo_dir)])
        assert online.exit_code == 0 and "valid" in online.output, (pdf.name, online.output)
    tampered = demo_dir.parent / "tampered.pdf"
    data = bytearray(samples[0].read_bytes())
    data[len(data) // 3] ^= 0x01
    tampered.write_bytes(bytes(data))
    result = runner.invoke(app, ["document", "verify", str(tampered), "--data", str(demo_dir)])
    assert result.exit_code == 1 and "failed" in result.output

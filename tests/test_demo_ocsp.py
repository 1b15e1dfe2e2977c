"""SPEC §7 end to end: `openssl ocsp -url …/ocsp` against `kiban serve --data <demo>` reports each
sample of ``pki/samples/index.json`` with its expected status and reason, and a valid signature."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from browser_support import free_port, serving
from kiban.demo.run import run_demo

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="openssl not installed")

# openssl's words for the CRL reasons (crypto/x509/v3_crld.c: reason_flags / ocsp_prn.c)
OPENSSL_REASON = {
    "keyCompromise": "keyCompromise",
    "superseded": "superseded",
    "certificateHold": "certificateHold",
    "affiliationChanged": "affiliationChanged",
    "cessationOfOperation": "cessationOfOperation",
}


@pytest.fixture(scope="module")
def served_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    directory = tmp_path_factory.mktemp("demo-ocsp") / "world"
    run_demo(directory, 300, seed=11)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "KIBAN_DATABASE_URL"}
    command = [
        sys.executable,
        "-c",
        "from kiban.cli.main import app; app()",
        "serve",
        "--data",
        str(directory),
    ]
    command += ["--port", str(port)]
    with serving(command, port, directory.parent / "serve.log", env=env, start_timeout=60) as base:
        yield directory, base


def test_openssl_ocsp_reports_every_sample_as_index_json_says(served_demo: tuple[Path, str]) -> None:
    directory, base = served_demo
    pki = directory / "pki"
    index = json.loads((pki / "samples" / "index.json").read_text())
    assert {e["status"] for e in index} == {"good", "revoked", "on hold"}
    for entry in index:
        ca = str(entry["ca"])
        root = pki / "ca" / ("lgpki-root.pem" if ca.startswith("lgpki") else "jpki-root.pem")
        issuer, cert = pki / "ca" / f"{ca}.pem", pki / str(entry["file"])
        for extra in ((), ("-no_nonce",)):
            result = subprocess.run(
                [str(OPENSSL), "ocsp", *extra, "-issuer", str(issuer), "-cert", str(cert),
                 "-url", f"{base}/ocsp", "-CAfile", str(root), "-verify_other", str(issuer),
                 "-timeout", "10"],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            out = result.stdout + result.stderr
            assert result.returncode == 0, (entry, out)
            assert "Response verify OK" in out, (entry, out)
            line = next(x for x in out.splitlines() if x.startswith(f"{cert}:"))
            expected = "good" if entry["status"] == "good" else "revoked"
            assert line.split(":", 1)[1].strip() == expected, (entry, out)
            if entry["status"] != "good":
                assert f"Reason: {OPENSSL_REASON[str(entry['reason'])]}" in out, (entry, out)


def test_the_crl_url_in_the_certificates_serves_the_published_crl(served_demo: tuple[Path, str]) -> None:
    directory, base = served_demo
    for crl_file in sorted((directory / "pki" / "crl").glob("*.crl")):
        served = httpx.get(f"{base}/crl/{crl_file.name}", timeout=10)
        assert served.status_code == 200, crl_file.name
        assert served.content == crl_file.read_bytes(), crl_file.name

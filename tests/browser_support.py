"""What the browser tests share: Debian's Chromium, and `kiban serve` on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SERVE = "import typer; from kiban.cli.serve import serve; typer.run(serve)"


def require_chromium() -> None:
    """Fail under CI when Chromium is missing (scripts/services.sh installs it), skip elsewhere."""
    if CHROMIUM.exists():
        return
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
    pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def serving(
    command: list[str],
    port: int,
    log_path: Path,
    *,
    env: dict[str, str] | None = None,
    start_timeout: float = 30,
) -> Iterator[str]:
    """Run a web server ``command`` listening on ``port``; yield its base URL once /healthz answers."""
    log = log_path.open("wb")
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{command[-1]!r}… did not start:\n" + log_path.read_text(errors="replace"))
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@contextmanager
def kiban_serve(db_url: str, tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """Run the real `kiban serve` over ``db_url`` in a subprocess; yield its base URL."""
    port = free_port()
    command = [sys.executable, "-c", SERVE, "--data", str(tmp_path / "data"), "--port", str(port), *extra]
    environment = {**os.environ, "KIBAN_DATABASE_URL": db_url, **(env or {})}
    with serving(command, port, tmp_path / "serve.log", env=environment, start_timeout=60) as base:
        yield base

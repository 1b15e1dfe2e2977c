"""Configuration: where the data lives and which database and event transport to use.

Everything comes from the command line or the environment (``KIBAN_*``); nothing is read
from files, so a process's configuration is visible in its environment alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_DATA_DIR = Path("var/kiban")


@dataclass(frozen=True)
class Settings:
    """Settings of one Kiban process."""

    data_dir: Path = DEFAULT_DATA_DIR
    # When unset, a SQLite file inside data_dir (SPEC §7).
    database_url_override: str | None = None
    # "embedded": in-process event delivery; "nats": NATS JetStream between nodes.
    event_transport: str = "embedded"
    nats_url: str = "nats://127.0.0.1:4222"
    # "development" serves CRL/OCSP openly on loopback; "production" requires credentials.
    mode: str = "development"
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def database_url(self) -> str:
        if self.database_url_override:
            return self.database_url_override
        return f"sqlite:///{(self.data_dir / 'kiban.sqlite').resolve()}"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    def ensure_dirs(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.keys_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.keys_dir, 0o700)


def load_settings(data_dir: Path | str | None = None) -> Settings:
    """Settings from the environment, with ``data_dir`` taking precedence when given."""
    env = os.environ
    directory = Path(data_dir) if data_dir is not None else Path(env.get("KIBAN_DATA_DIR", DEFAULT_DATA_DIR))
    return Settings(
        data_dir=directory,
        database_url_override=env.get("KIBAN_DATABASE_URL") or None,
        event_transport=env.get("KIBAN_EVENT_TRANSPORT", "embedded"),
        nats_url=env.get("KIBAN_NATS_URL", "nats://127.0.0.1:4222"),
        mode=env.get("KIBAN_MODE", "development"),
    )

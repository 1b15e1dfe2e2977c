"""What every demo chapter shares: settings, database, progress display and the report."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from rich.progress import Progress
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from kiban.core.config import Settings


@dataclass
class ReportSection:
    title: str
    body: str


@dataclass
class DemoContext:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    progress: Progress
    seed: int
    as_of: date
    residents: int
    sections: list[ReportSection] = field(default_factory=list)
    timings: list[tuple[str, float, str]] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    @contextmanager
    def step(self, name: str, total: int | None = None) -> Iterator[Any]:
        """A timed step with a progress bar; yields a callback ``advance(n)``."""
        task = self.progress.add_task(name, total=total)
        started = time.perf_counter()

        def advance(n: int = 1) -> None:
            self.progress.advance(task, n)

        try:
            yield advance
        finally:
            elapsed = time.perf_counter() - started
            done = self.progress.tasks[task].completed if total else 0
            rate = f"{done / elapsed:,.0f}/s" if total and elapsed > 0 else ""
            self.timings.append((name, elapsed, rate))
            self.progress.update(task, completed=total or 1, total=total or 1)

"""Wiring events to handlers in a running process.

Each capability that reacts to events has a ``handlers`` module with
``register_handlers(registry)``; :func:`build_registry` finds them all, so one process (embedded
mode) or one role's process (production) subscribes exactly what its code provides.
:class:`EmbeddedDispatcher` delivers the outbox in-process in the background for ``kiban serve``.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import threading
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from sqlalchemy.orm import Session, sessionmaker

import kiban
from kiban.core.events import Registry, drain

LOG = logging.getLogger(__name__)


def handler_modules() -> list[str]:
    return sorted(
        m.name
        for m in pkgutil.walk_packages(kiban.__path__, "kiban.")
        if m.name.endswith(".handlers") and m.name.count(".") == 2
    )


def build_registry(modules: list[str] | None = None) -> Registry:
    """A registry with every capability's handlers (``kiban.<capability>.handlers``)."""
    registry = Registry()
    for name in modules if modules is not None else handler_modules():
        module = importlib.import_module(name)
        module.register_handlers(registry)
    return registry


class EmbeddedDispatcher:
    """Delivers pending outbox events every ``interval`` seconds on a background thread.

    Services also drain right after their own commits where the caller waits for the effect;
    this loop catches everything else (retries after backoff, events from other processes
    sharing the database) so nothing stays pending.
    """

    def __init__(self, factory: sessionmaker[Session], registry: Registry, interval: float = 0.5) -> None:
        self._factory = factory
        self._registry = registry
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kiban-events", daemon=True)
        self.delivered = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.delivered += drain(self._factory, self._registry)
            except Exception:  # keep the loop alive: a database blip must not stop delivery for good
                LOG.exception("event delivery round failed; retrying")
            self._stop.wait(self._interval)


class EventStatsCollector:
    """Prometheus gauges of the outbox, read from the database at each scrape."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self._factory = factory

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from kiban.core.events import event_stats

        gauge = GaugeMetricFamily(
            "kiban_events",
            "Domain events by state: undelivered, unpublished, failing, parked.",
            labels=["state"],
        )
        try:
            with self._factory() as session:
                stats = event_stats(session)
        except Exception:  # an unreachable database shows as missing gauges, /readyz says why
            LOG.warning("event stats unavailable for /metrics")
            return
        for state in ("undelivered", "unpublished", "failing", "parked"):
            gauge.add_metric([state], getattr(stats, state))
        yield gauge

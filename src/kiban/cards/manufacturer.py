"""The card manufacturer (カード製造事業者) and the municipality's receiving desk, as queue consumers.

The manufacturer is a separate component: it reads only its queue (``manufacturer``), prints the
card face from the order, makes the chip (a blank :class:`~kiban.cards.softcard.SoftCard`: face
data, no PINs, no keys — keys are made at the counter), ships it as a file into
``<out_dir>/<municipality>/<card id>.kcard`` encrypted under the municipality's transport
passphrase, and reports back through :func:`kiban.cards.service.record_produced`, which queues the
arrival for the municipality. Re-applying a message after a crash rewrites the same blank card
(it holds no keys yet), so the file side is idempotent too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from kiban.cards import service
from kiban.cards.models import QueueMessage
from kiban.cards.queue import drain_queue
from kiban.cards.softcard import Algorithm, CardFace, SoftCard

MANUFACTURER = service.Actor(username="card-manufacturer", role="manufacturer")
RECEIVING = service.Actor(username="card-receiving", role="municipality_system")


def card_path(out_dir: Path, municipality_code: str, card_id: str) -> Path:
    return Path(out_dir) / municipality_code / f"{card_id}.kcard"


@dataclass
class Manufacturer:
    out_dir: Path
    transport_passphrase: str
    algorithm: Algorithm = "rsa2048"

    def produce(self, session: Session, message: QueueMessage) -> None:
        card = service.get_card(session, str(message.payload["card_id"]), lock=True)
        today = service.today_jst()
        record, face = service.card_face(session, MANUFACTURER, card, today=today)
        # 発行日 is the production date printed on the card, as on the real card; the expiry follows it.
        expires_on = service.card_validity(record.birth_date, today, record.period_of_stay_end)
        soft = SoftCard.blank(
            CardFace(
                card_id=card.card_id,
                name=str(face["name"]),
                address=str(face["address"]),
                birth_date=date.fromisoformat(str(face["birth_date"])),
                sex=int(face["sex"]),
                expires_on=expires_on,
                municipality_code=card.municipality_code,
                individual_number=face["individual_number"],
            ),
            algorithm=self.algorithm,
        )
        path = card_path(self.out_dir, card.municipality_code, card.card_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        soft.save(path, self.transport_passphrase)
        service.record_produced(session, MANUFACTURER, card.card_id, expires_on=expires_on)

    def run(self, factory: sessionmaker[Session], *, max_messages: int | None = None, chunk: int = 50) -> int:
        return drain_queue(
            factory,
            service.MANUFACTURER_QUEUE,
            {"produce": self.produce},
            chunk=chunk,
            max_messages=max_messages,
        )


def arrive(session: Session, message: QueueMessage) -> None:
    service.record_shipped(session, RECEIVING, str(message.payload["card_id"]))


def receive_shipments(factory: sessionmaker[Session], *, max_messages: int | None = None) -> int:
    """The municipality takes in the cards that arrived (state ``shipped``)."""
    return drain_queue(factory, service.MUNICIPALITY_QUEUE, {"arrive": arrive}, max_messages=max_messages)


def main(argv: list[str] | None = None) -> int:
    """``python -m kiban.cards.manufacturer --data DIR [--role manufacturer|municipality] [--once]``

    Runs one consumer as its own process: the manufacturer (cards into ``<data>/cards/shipped/``)
    or the municipality's receiving desk. Stop it and the queue grows; start it and it drains in order.
    """
    import argparse
    import logging
    import time

    from kiban.cards import storage
    from kiban.core.config import load_settings
    from kiban.core.database import make_engine, session_factory

    parser = argparse.ArgumentParser(prog="python -m kiban.cards.manufacturer")
    parser.add_argument("--data", default=None, help="data directory (database, keys, cards/)")
    parser.add_argument("--role", choices=("manufacturer", "municipality"), default="manufacturer")
    parser.add_argument("--once", action="store_true", help="drain what is queued, then exit")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between polls")
    parser.add_argument("--algorithm", choices=("rsa2048", "p256"), default="rsa2048")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    settings = load_settings(args.data)
    engine = make_engine(settings.database_url)
    factory = session_factory(engine)
    if args.role == "manufacturer":
        maker = Manufacturer(
            storage.shipped_dir(settings.data_dir),
            storage.transport_passphrase(settings.keys_dir),
            args.algorithm,
        )

        def consume() -> int:
            return maker.run(factory)
    else:

        def consume() -> int:
            return receive_shipments(factory)

    try:
        while True:
            done = consume()
            if done:
                logging.getLogger("kiban.cards").info("%s: %d messages consumed", args.role, done)
            if args.once:
                return 0
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0
    finally:
        engine.dispose()


if __name__ == "__main__":
    raise SystemExit(main())

"""Shared world of the kiosk tests: residents in three municipalities with active cards, a CA,
the national copy, participating municipalities, an operator with kiosks."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from kiban.cards import service as cards
from kiban.cards.documents import issue_notice
from kiban.cards.manufacturer import Manufacturer, card_path, receive_shipments
from kiban.cards.models import Card
from kiban.cards.service import Actor, Application, IdentityCheck
from kiban.cards.softcard import SoftCard
from kiban.core.documents import KeyDirectorySigners
from kiban.core.identifiers import IndividualNumberCipher, ResidentCodeGenerator
from kiban.jpki import service as jpki
from kiban.jpki.keys import FileKeyStore
from kiban.kiosk import service as kiosk
from kiban.kiosk.issuing import RegisterIssuer
from kiban.kiosk.service import Centre, KioskCredential
from kiban.kiosk.signing import finish_pdf, pades_finisher
from kiban.network import service as network
from kiban.numbering import service as numbering
from kiban.register.loader import load_population
from kiban.register.models import Resident
from kiban.register.population import generate_population

A, B, C = "131016", "212016", "131041"  # 千代田区, 岐阜市, 新宿区
OPERATOR = Actor("jlis-1", "national_operator")
CIPHER = IndividualNumberCipher(bytes(range(32)))
PINS = {"user_auth": "1234", "signature": "ABC123", "juki": "5678", "face": "9012"}
ID_OK = IdentityCheck(documents=("driving_licence",), checked_by="clerk")
TRANSPORT = "transport passphrase kiosk"
FEES = {"resident_copy": 200, "entry_certificate": 200, "seal_certificate": 300, "koseki_fuhyo": 250}


@dataclass
class World:
    session_maker: sessionmaker[Session]
    keystore: FileKeyStore
    signers: KeyDirectorySigners
    centre: Centre
    kiosk: KioskCredential
    other_kiosk: KioskCredential
    cards: dict[str, SoftCard] = field(default_factory=dict)  # 住民票コード → the holder's card
    municipality: dict[str, str] = field(default_factory=dict)  # 住民票コード → municipality


def build_world(
    engine: Engine,
    session_maker: sessionmaker[Session],
    tmp_path: Path,
    *,
    people: int = 30,
    holders: int = 6,
    seed: int = 11,
    municipalities: tuple[str, ...] = (A, B, C),
    sign: bool = True,
    keys_dir: Path | None = None,
) -> World:
    households = list(generate_population(list(municipalities), people, seed=seed, as_of=date(2025, 4, 1)))
    with session_maker.begin() as s:
        codes = numbering.issue_resident_codes(s, people, ResidentCodeGenerator(random.Random(seed)))
    load_population(engine, households, iter(codes))
    ks = FileKeyStore(keys_dir or tmp_path / "keys")
    with session_maker.begin() as s:
        numbering.assign_individual_numbers_bulk(s, codes, CIPHER)
        network.seed_copies(s)
        jpki.init_hierarchies(
            s, ks, "http://127.0.0.1:8000", algorithm="p256", now=datetime.now(UTC) - timedelta(days=1)
        )
        cutoff = date.today().replace(year=date.today().year - 20)
        adults = list(
            s.scalars(
                select(Resident)
                .where(
                    Resident.status == "active",
                    Resident.birth_date <= cutoff,
                    Resident.period_of_stay_end.is_(None),
                )
                .order_by(Resident.resident_code)
            )
        )
        chosen = adults[:holders]
        where = {r.resident_code: r.municipality_code for r in chosen}
        forms: dict[str, str] = {}
        for town in municipalities:
            mine = [c for c, m in where.items() if m == town]
            if mine:
                forms.update(cards.issue_forms(s, Actor(f"clerk-{town}", "clerk", town), mine, town))
        for code in where:
            card = cards.apply(
                s, Actor(f"clerk-{where[code]}", "clerk", where[code]), Application(forms[code])
            )
            cards.check(s, OPERATOR, card.card_id)
        cards.order_production(s, OPERATOR, limit=len(where))
    Manufacturer(tmp_path / "cards", TRANSPORT, algorithm="p256").run(session_maker)
    receive_shipments(session_maker)
    world_cards: dict[str, SoftCard] = {}
    with session_maker.begin() as s:
        for card in s.scalars(select(Card).where(Card.resident_code.in_(list(where)))):
            town = card.municipality_code
            clerk = Actor(f"clerk-{town}", "clerk", town)
            issue_notice(s, clerk, card.card_id)
            soft = SoftCard.open(card_path(tmp_path / "cards", town, card.card_id), TRANSPORT)
            cards.hand_over(s, clerk, card.card_id, soft=soft, identity=ID_OK, pins=PINS, keystore=ks)
            world_cards[card.resident_code] = soft
    with session_maker.begin() as s:
        for town in municipalities:
            for kind, fee in FEES.items():
                kiosk.set_participation(s, town, kind, fee=fee)
        kiosk.register_operator(s, "seven", "セブン・デモ")
        kiosk.register_operator(s, "lawson", "ローソン・デモ")
        _, cred1 = kiosk.register_kiosk(s, "seven", "seven-0001", "千代田一番町店")
        _, cred2 = kiosk.register_kiosk(s, "lawson", "lawson-0001", "岐阜駅前店")
    signers = KeyDirectorySigners(tmp_path / "doc-keys")
    # Every PDF PAdES-signed by the municipality's organisation key, as in production.
    finish = pades_finisher(session_maker, ks) if sign else finish_pdf
    centre = Centre(
        session_maker, RegisterIssuer(session_maker, signers=signers, finish=finish), require_signed=sign
    )
    return World(
        session_maker,
        ks,
        signers,
        centre,
        KioskCredential("seven-0001", cred1, "2"),
        KioskCredential("lawson-0001", cred2, "2"),
        world_cards,
        where,
    )


def sign_in(world: World, code: str, credential: KioskCredential | None = None, pin: str = "1234") -> str:
    """The kiosk flow up to the menu: challenge, PIN on the card, signature, authentication."""
    cred = credential or world.kiosk
    soft = world.cards[code]
    challenge = world.centre.open_session(cred)
    signature = soft.sign_challenge(pin, challenge.challenge)
    cert = soft.certificate("user_auth")
    assert cert is not None
    world.centre.authenticate(cred, challenge.session_id, challenge.challenge, cert, signature)
    return challenge.session_id

"""No misissuance under load (SPEC K6): ≥1,000 kiosk sessions in parallel for ≥100 holders in three
municipalities, the municipal issuing function slowed and answering out of order; every printed
document, read back from the PDF, belongs to its session's holder."""

from __future__ import annotations

import io
import queue
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from pypdf import PdfReader
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from kiban.core.models.documents import IssuedDocument
from kiban.kiosk import service as kiosk
from kiban.kiosk.issuing import MunicipalRequest, MunicipalResponse, RegisterIssuer
from kiban.kiosk.models import KioskIssuance
from kiban.kiosk.service import Centre, KioskCredential
from kiban.register.models import Resident
from kiosk_support import A, B, C, World, build_world, sign_in  # noqa: I001 - tests/ is on the path

pytestmark = pytest.mark.slow

SESSIONS = 1000
HOLDERS = 105


class SlowReorderingIssuer:
    """Queues requests and answers them from a few workers in shuffled batches, with random delays."""

    def __init__(self, inner: RegisterIssuer, workers: int = 4, batch: int = 8, seed: int = 5) -> None:
        self.inner = inner
        self.queue: queue.Queue[tuple[MunicipalRequest, Future[MunicipalResponse]] | None] = queue.Queue()
        self.batch = batch
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.order: list[str] = []
        self.threads = [threading.Thread(target=self._work, daemon=True) for _ in range(workers)]
        for t in self.threads:
            t.start()

    def __call__(self, request: MunicipalRequest) -> MunicipalResponse:
        future: Future[MunicipalResponse] = Future()
        self.queue.put((request, future))
        return future.result(timeout=300)

    def _work(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            items = [first]
            time.sleep(0.005)  # let a batch gather
            while len(items) < self.batch:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self.queue.put(None)
                    break
                items.append(item)
            with self.lock:
                self.random.shuffle(items)
                delays = [self.random.random() * 0.01 for _ in items]
            for (request, future), delay in zip(items, delays, strict=True):
                time.sleep(delay)
                try:
                    answer = self.inner(request)
                except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                    future.set_exception(exc)
                else:
                    with self.lock:
                        self.order.append(request.request_id)
                    future.set_result(answer)

    def stop(self) -> None:
        for _ in self.threads:
            self.queue.put(None)


@pytest.fixture
def world(engine: Engine, session_maker: sessionmaker[Session], tmp_path: Path) -> Iterator[World]:
    yield build_world(engine, session_maker, tmp_path, people=260, holders=HOLDERS, seed=23)


def test_a_thousand_parallel_sessions_never_cross_issue(world: World) -> None:
    holders = sorted(world.cards)
    assert len(holders) >= 100 and {world.municipality[h] for h in holders} == {A, B, C}
    with world.session_maker() as s:
        persons = {
            r.resident_code: (f"{r.family_name}{r.given_name}", r.household_id)
            for r in s.scalars(select(Resident).where(Resident.status == "active"))
        }
    slow = SlowReorderingIssuer(RegisterIssuer(world.session_maker, signers=world.signers))
    centre = Centre(world.session_maker, slow)
    world.centre = centre
    kiosks = [world.kiosk, world.other_kiosk]
    with world.session_maker.begin() as s:
        for i in range(4):
            _, cred = kiosk.register_kiosk(s, "seven", f"seven-1{i:03d}", f"店舗{i}")
            kiosks.append(KioskCredential(f"seven-1{i:03d}", cred, "2"))
    kinds = ["resident_copy", "entry_certificate", "resident_copy"]

    def one(i: int) -> tuple[str, bool, kiosk.Printable]:
        holder = holders[i % len(holders)]
        cred = kiosks[i % len(kiosks)]
        household = i % 7 == 0
        sid = sign_in(world, holder, cred)
        printed = centre.request_document(cred, sid, kinds[i % 3], household=household)
        assert printed.session_id == sid
        centre.close(cred, sid)
        return holder, household, printed

    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(max_workers=32) as pool:
            results = list(pool.map(one, range(SESSIONS)))
    finally:
        slow.stop()
    elapsed = time.perf_counter() - started
    assert len(results) == SESSIONS
    # the municipal side really answered out of order
    issued_order = [p.request_id for _, _, p in results]
    assert slow.order != issued_order and sorted(slow.order) == sorted(issued_order)

    names = {code: name.replace("　", "") for code, (name, _) in persons.items()}
    crossed = 0
    with world.session_maker() as s:
        ledger = {d.serial: d for d in s.scalars(select(IssuedDocument))}
        for holder, household, printed in results:
            text = "".join(p.extract_text() for p in PdfReader(io.BytesIO(printed.pdf)).pages)
            text = text.replace(" ", "").replace("\u3000", "")
            row = ledger[printed.serial]
            assert printed.serial in text
            subject = row.subject_resident_code
            assert subject is not None
            if names[holder] not in text:  # the holder's own name is printed
                crossed += 1
            elif household:  # a household copy: the ledger's subject is the head of the holder's household
                crossed += persons[subject][1] != persons[holder][1]
            else:
                crossed += subject != holder
        assert s.scalar(select(func.count()).select_from(KioskIssuance)) == SESSIONS
        by_session = s.execute(
            select(KioskIssuance.session_id, KioskIssuance.holder_resident_code, KioskIssuance.serial)
        ).all()
    assert crossed == 0
    expected = {p.session_id: (h, p.serial) for h, _, p in results}
    assert {sid: (h, serial) for sid, h, serial in by_session} == expected
    print(f"{SESSIONS} sessions in {elapsed:.1f}s")

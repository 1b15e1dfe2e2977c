"""The counter's renewal, certificate renewal and 在留期間 pages over TestClient (both engines)."""

from __future__ import annotations

from datetime import timedelta

from kiban.cards import service, states
from kiban.cards.models import Card
from test_cards_api import HTML, PINS, World, cheap_scrypt, state_of, world  # noqa: F401 - fixtures


def test_renewal_pages_at_the_counter(world: World) -> None:  # noqa: F811 - the fixture
    clerk = world.client("chiyoda")
    card_id = world.card_id
    done = clerk.post(
        f"/cards/{card_id}/hand-over",
        data={**PINS, "documents": ["passport"], "holder_passphrase": "holder pass 1"},
        headers=HTML,
        follow_redirects=False,
    )
    assert done.status_code == 303, done.text
    page = clerk.get(f"/cards/{card_id}", headers=HTML)
    assert "カードの更新" in page.text and "電子証明書の更新" in page.text and "在留期間の更新" in page.text
    # years before expiry: refused with the rule in Japanese, nothing changed
    early = clerk.post(f"/cards/{card_id}/renew", headers=HTML)
    assert early.status_code == 409 and "3か月前" in early.text
    certs = clerk.post(
        f"/cards/{card_id}/renew-certificates",
        data={
            "documents": ["passport"],
            "pin_user_auth": "1234",
            "pin_signature": "ABC123",
            "holder_passphrase": "holder pass 1",
        },
        headers=HTML,
    )
    assert certs.status_code == 409 and "3か月前" in certs.text
    stay = clerk.post(f"/cards/{card_id}/extend-stay", data={"documents": ["passport"]}, headers=HTML)
    assert stay.status_code == 422 and "在留期間のない方" in stay.text
    no_id = clerk.post(f"/cards/{card_id}/extend-stay", headers=HTML)
    assert no_id.status_code == 422 and "本人確認書類" in no_id.text
    # another municipality's clerk cannot renew
    other = world.client("shinjuku")
    assert other.post(f"/cards/{card_id}/renew", headers=HTML).status_code == 403
    assert state_of(world) == states.ACTIVE
    # the card in its last 3 months (test shortcut on the row)
    with world.factory.begin() as s:
        s.get_one(Card, card_id).expires_on = service.today_jst() + timedelta(days=45)
    renewed = clerk.post(f"/cards/{card_id}/renew", headers=HTML, follow_redirects=False)
    assert renewed.status_code == 303, renewed.text
    new_id = renewed.headers["location"].split("/")[2].split("?")[0]
    page = clerk.get(renewed.headers["location"], headers=HTML)
    assert "カードの更新申請を受け付けました" in page.text and "申請受付" in page.text
    with world.factory() as s:
        assert service.get_card(s, new_id).renewal_of == card_id
        assert service.get_card(s, card_id).state == states.ACTIVE

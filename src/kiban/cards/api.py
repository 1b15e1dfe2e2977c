"""The card lifecycle on the web: the clerk's counter (交付窓口), the call centre, and a JSON API.

Pages (Japanese, no JavaScript): ``/cards`` — cards of the clerk's municipality waiting for
hand-over and the queues' depth; ``/cards/{id}`` — a card, its history and what can be done now
(hand-over with the identity check and the PINs typed on the counter's PIN pad, suspension,
found, PIN reset, abolition); ``/cards/call-centre`` — the call queue, caller identification,
suspension and found by phone, and today's answer rate. JSON: ``/api/cards/...``.

The counter terminal holds the software card: it opens the shipped card file with the
municipality's transport passphrase, hands the PINs straight to the card (they reach no table and
no log), and after the hand-over writes the card under the holder's own passphrase
(:mod:`kiban.cards.storage`). Each request is one transaction; a refusal changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.responses import Response

from kiban.cards import callcentre, service, states, storage
from kiban.cards.models import Card
from kiban.cards.service import CardsError, IdentityCheck
from kiban.cards.softcard import PIN_JA, CardError, SoftCard
from kiban.core.wareki import to_wareki
from kiban.web.app import NavItem, add_nav_item, render
from kiban.web.auth import CurrentUser, require_role

router = APIRouter(prefix="/api/cards", tags=["cards"])
pages = APIRouter(prefix="/cards", include_in_schema=False)

Clerk = Annotated[CurrentUser, Depends(require_role("clerk"))]
Agent = Annotated[CurrentUser, Depends(require_role("call_centre"))]
Staff = Annotated[CurrentUser, Depends(require_role("clerk", "call_centre", "national_operator"))]

RULES_JA: dict[str, str] = {
    "identity_check_required": "本人確認書類を確認してください（A書類1点またはB書類2点）。",
    "identity_insufficient": "本人確認書類が足りません（A書類1点またはB書類2点）。",
    "unknown_document": "本人確認書類の種類が正しくありません。",
    "pin_format": "暗証番号の形式が正しくありません。",
    "required": "必須項目です。",
    "transition_not_allowed": "このカードの状態ではその手続はできません。",
    "already_suspended": "このカードはすでに一時停止中です。",
    "replayed_request": "この依頼はすでに処理済みです。",
    "wrong_card": "提示されたカードがこのカードと一致しません。",
    "not_blank": "このカードはすでに交付済みです。",
    "own_municipality": "担当する市区町村のカードではありません。",
    "caller_not_identified": "先に本人確認（知識質問）を行ってください。",
    "identify_locked": "本人確認に3回失敗しました。この通話では手続できません。",
    "not_answered": "先に応答してください。",
    "call_closed": "この通話はすでに終了しています。",
    "passphrase_length": "カードの合言葉は8文字以上で入力してください。",
    "stay_ended": "在留期間が満了しています。",
    "pin_locked": "暗証番号がロックされています。",
    "not_found": "該当するカードがありません。",
    "not_issued": "交付済みのカードではありません。",
    "pending_application": "この方のカードはすでに申請中です。",
    "pin_wrong": "暗証番号が違います。",
    "decrypt_failed": "カードの合言葉が違います。",
    "format": "形式が正しくありません。",
    "renewal_window": "更新の手続は有効期限の3か月前からです。",
    "not_active": "利用中のカードではありません。",
    "clerk_only": "市区町村の窓口で行う手続です。",
    "no_certificate": "更新できる電子証明書がありません。再発行の手続をしてください。",
    "card_renewal_needed": "電子証明書とともにカードの有効期限が到来します。カードの更新を申請してください。",
    "no_period_of_stay": "在留期間のない方のカードです。",
    "stay_not_extended": "住民票の在留期間の満了日が更新されていません。",
    "expired": "カードの有効期限が切れています。",
    "not_allowed": "この手続では入力しない暗証番号です。",
}
DOCUMENTS_JA: dict[str, str] = {
    "driving_licence": "運転免許証（A）",
    "passport": "旅券（A）",
    "residence_card": "在留カード（A）",
    "disability_certificate": "身体障害者手帳（A）",
    "health_insurance": "健康保険証（B）",
    "pension_book": "年金手帳（B）",
    "student_id": "学生証（B）",
    "employee_id": "社員証（B）",
    "notice_letter": "交付通知書（B）",
}
DOCUMENTS_JA = {k: DOCUMENTS_JA[k] for k in sorted(service.ID_DOCUMENTS_A)} | {
    k: DOCUMENTS_JA[k] for k in sorted(service.ID_DOCUMENTS_B)
}


@contextmanager
def unit(request: Request) -> Iterator[Session]:
    session: Session = request.app.state.session_factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _actor(user: CurrentUser) -> service.Actor:
    return service.Actor(user.username, user.role, user.municipality_code)


def _own(card: Card, user: CurrentUser) -> None:
    if user.role == "clerk" and card.municipality_code != user.municipality_code:
        raise CardsError(
            "card_id", "own_municipality", "the card belongs to another municipality", status=403
        )


def _message(exc: CardsError | CardError) -> str:
    return RULES_JA.get(exc.rule, getattr(exc, "message", "") or exc.rule)


def _view(card: Card) -> dict[str, Any]:
    return {
        "card_id": card.card_id,
        "state": card.state,
        "state_ja": states.STATE_JA[card.state],
        "municipality_code": card.municipality_code,
        "channel": card.channel,
        "express": card.express,
        "applied_on": card.applied_on.isoformat(),
        "issued_on": card.issued_on.isoformat() if card.issued_on else None,
        "expires_on": card.expires_on.isoformat() if card.expires_on else None,
        "overseas": card.overseas,
        "version": card.version,
    }


# --------------------------------------------------------------------------- JSON API


class SuspendBody(BaseModel):
    reason: str = Field(default="lost", max_length=16)
    request_id: str | None = Field(default=None, max_length=64)
    call_id: int | None = None


@router.get("/queues")
def api_queues(request: Request, user: Staff) -> dict[str, int]:
    """Backlog: messages waiting for the manufacturer and the municipalities."""
    with unit(request) as s:
        return service.queue_depths(s)


@router.get("/{card_id}")
def api_card(request: Request, card_id: str, user: Staff) -> dict[str, Any]:
    with unit(request) as s:
        card = service.get_card(s, card_id)
        _own(card, user)
        return _view(card)


@router.post("/{card_id}/suspend")
def api_suspend(request: Request, card_id: str, body: SuspendBody, user: Staff) -> dict[str, Any]:
    """一時停止. The call centre names the call on which the caller was identified."""
    with unit(request) as s:
        card = service.get_card(s, card_id, lock=True)
        _own(card, user)
        held: list[str] = []
        if user.role == "call_centre":
            if body.call_id is None:
                raise CardsError("call_id", "required", "the call centre suspends on an identified call")
            held = callcentre.suspend_by_call(
                s, _actor(user), body.call_id, card_id, reason=body.reason, request_id=body.request_id
            )
        else:
            service.suspend(s, _actor(user), card_id, reason=body.reason, request_id=body.request_id)
        return {**_view(card), "smartphone_certificates_held": held}


@router.post("/{card_id}/found")
def api_found(request: Request, card_id: str, user: Staff, call_id: int | None = None) -> dict[str, Any]:
    with unit(request) as s:
        card = service.get_card(s, card_id, lock=True)
        _own(card, user)
        if user.role == "call_centre":
            if call_id is None:
                raise CardsError(
                    "call_id", "required", "the call centre records a find on an identified call"
                )
            callcentre.found_by_call(s, _actor(user), call_id, card_id)
        else:
            service.record_found(s, _actor(user), card_id)
        return _view(card)


# --------------------------------------------------------------------------- the counter


Desk = Annotated[CurrentUser, Depends(require_role("clerk", "national_operator"))]


@pages.get("")
def counter(request: Request, user: Desk) -> Response:
    """The clerk's counter list; for J-LIS staff (national_operator) the national overview."""
    with unit(request) as s:
        municipality = user.municipality_code if user.role == "clerk" else None
        waiting: list[Card] = []
        if municipality is not None:
            waiting = list(
                s.scalars(
                    select(Card)
                    .where(Card.municipality_code == municipality, Card.state == states.NOTIFIED)
                    .order_by(Card.express.desc(), Card.applied_on, Card.card_id)
                    .limit(200)
                )
            )
        by_state = dict(
            s.execute(
                select(Card.state, func.count())
                .where(*([Card.municipality_code == municipality] if municipality else []))
                .group_by(Card.state)
            ).all()
        )
        depths = service.queue_depths(s)
        express = service.express_report(s, today=service.today_jst(), municipality_code=municipality)
        return render(
            request,
            "cards/counter.html",
            {
                "waiting": waiting,
                "depths": depths,
                "express": express[-50:],
                "by_state": [(states.STATE_JA[k], by_state.get(k, 0)) for k in states.STATES],
                "national": municipality is None,
            },
        )


@pages.get("/suspend")
def suspend_desk(request: Request, user: Agent) -> Response:
    """The call centre's entry point (the home page's 「カードの一時停止」)."""
    return _call_page(request, user)


def _card_page(
    request: Request,
    s: Session,
    user: CurrentUser,
    card_id: str,
    *,
    error: str | None = None,
    done: str | None = None,
    status_code: int = 200,
) -> Response:
    card = service.get_card(s, card_id)
    _own(card, user)
    history = service.history(s, card_id)
    return render(
        request,
        "cards/card.html",
        {
            "card": card,
            "state_ja": states.STATE_JA,
            "history": history,
            "documents": DOCUMENTS_JA,
            "pin_ja": PIN_JA,
            "error": error,
            "done": done,
            "expires_wareki": to_wareki(card.expires_on) if card.expires_on else None,
            "renewal_opens": service.renewal_opens(card.expires_on) if card.expires_on else None,
            "changes": service.changes(s, card_id),
        },
        status_code=status_code,
    )


@pages.get("/call-centre")
def call_centre(request: Request, user: Agent) -> Response:
    return _call_page(request, user)


@pages.get("/{card_id}")
def card_page(request: Request, card_id: str, user: Clerk, done: str | None = None) -> Response:
    with unit(request) as s:
        return _card_page(request, s, user, card_id, done=done)


async def _form(request: Request) -> dict[str, Any]:
    form = await request.form()
    return {"documents": form.getlist("documents"), **{k: form.get(k) for k in form if k != "documents"}}


@pages.post("/{card_id}/hand-over")
async def hand_over_submit(request: Request, card_id: str, user: Clerk) -> Response:
    form = await _form(request)
    settings = request.app.state.settings
    shipped = storage.shipped_dir(settings.data_dir) / (user.municipality_code or "") / f"{card_id}.kcard"
    target = storage.issued_path(settings.data_dir, card_id)
    pins = {kind: str(form.get(f"pin_{kind}") or "") for kind in PIN_JA if form.get(f"pin_{kind}")}
    from kiban.jpki.keys import keystore_from_settings

    try:
        if not shipped.is_file():
            raise CardsError("card_id", "not_found", "the card has not arrived at this counter", status=404)
        soft = SoftCard.open(shipped, storage.transport_passphrase(settings.keys_dir))
        target.parent.mkdir(parents=True, exist_ok=True)
        # The holder's copy is written first; the shipped file stays blank until the hand-over commits.
        soft.save(target, str(form.get("holder_passphrase") or ""))
        try:
            with unit(request) as s:
                service.hand_over(
                    s,
                    _actor(user),
                    card_id,
                    soft=soft,
                    identity=IdentityCheck(tuple(form["documents"]), user.username),
                    pins=pins,
                    keystore=keystore_from_settings(settings),
                )
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        shipped.unlink(missing_ok=True)
    except (CardsError, CardError) as exc:
        with unit(request) as s:
            return _card_page(request, s, user, card_id, error=_message(exc), status_code=_status(exc))
    return RedirectResponse(f"/cards/{card_id}?done=hand-over", status_code=303)


def _status(exc: CardsError | CardError) -> int:
    return getattr(exc, "status", 422) if isinstance(exc, CardsError) else 422


async def _simple(request: Request, card_id: str, user: CurrentUser, action: str) -> Response:
    form = await _form(request)
    try:
        with unit(request) as s:
            card = service.get_card(s, card_id, lock=True)
            _own(card, user)
            actor = _actor(user)
            if action == "suspend":
                service.suspend(s, actor, card_id, reason=str(form.get("reason") or "lost"))
            elif action == "found":
                service.record_found(s, actor, card_id)
            elif action == "abolish":
                service.abolish(s, actor, card_id, reason=str(form.get("reason") or "returned"))
    except CardsError as exc:
        with unit(request) as s:
            return _card_page(request, s, user, card_id, error=_message(exc), status_code=_status(exc))
    return RedirectResponse(f"/cards/{card_id}?done={action}", status_code=303)


@pages.post("/{card_id}/suspend")
async def suspend_submit(request: Request, card_id: str, user: Clerk) -> Response:
    return await _simple(request, card_id, user, "suspend")


@pages.post("/{card_id}/found")
async def found_submit(request: Request, card_id: str, user: Clerk) -> Response:
    return await _simple(request, card_id, user, "found")


@pages.post("/{card_id}/abolish")
async def abolish_submit(request: Request, card_id: str, user: Clerk) -> Response:
    return await _simple(request, card_id, user, "abolish")


@pages.post("/{card_id}/reissue")
async def reissue_submit(request: Request, card_id: str, user: Clerk) -> Response:
    """再交付申請 (特急 when the card was lost): a new application for the same person."""
    await _form(request)
    try:
        with unit(request) as s:
            new = service.apply_reissue(s, _actor(user), card_id)
            new_id = new.card_id
    except CardsError as exc:
        with unit(request) as s:
            return _card_page(request, s, user, card_id, error=_message(exc), status_code=_status(exc))
    return RedirectResponse(f"/cards/{new_id}?done=reissue", status_code=303)


@pages.post("/{card_id}/certificates")
async def certificates_submit(request: Request, card_id: str, user: Clerk) -> Response:
    """電子証明書の再発行 (after a card was found again): new keys on the card, new certificates."""
    form = await _form(request)
    settings = request.app.state.settings
    path = storage.issued_path(settings.data_dir, card_id)
    pins = {
        kind: str(form.get(f"pin_{kind}") or "")
        for kind in ("user_auth", "signature")
        if form.get(f"pin_{kind}")
    }
    from kiban.jpki.keys import keystore_from_settings

    try:
        if not path.is_file():
            raise CardsError(
                "card_id", "not_found", "the holder's card file is not at this counter", status=404
            )
        soft = SoftCard.open(path, str(form.get("holder_passphrase") or ""))
        with unit(request) as s:
            service.reissue_certificates(
                s,
                _actor(user),
                card_id,
                soft=soft,
                identity=IdentityCheck(tuple(form["documents"]), user.username),
                pins=pins,
                keystore=keystore_from_settings(settings),
            )
    except (CardsError, CardError) as exc:
        with unit(request) as s:
            return _card_page(request, s, user, card_id, error=_message(exc), status_code=_status(exc))
    return RedirectResponse(f"/cards/{card_id}?done=certificates", status_code=303)


@pages.post("/{card_id}/renew")
async def renew_submit(request: Request, card_id: str, user: Clerk) -> Response:
    """カードの更新申請 (from 3 months before expiry): a new application; the old card is abolished
    when the new one is handed over, and its certificates are superseded by the new ones."""
    await _form(request)
    try:
        with unit(request) as s:
            new_id = service.apply_renewal(s, _actor(user), card_id).card_id
    except CardsError as exc:
        with unit(request) as s:
            return _card_page(request, s, user, card_id, error=_message(exc), status_code=_status(exc))
    return RedirectResponse(f"/cards/{new_id}?done=renew", status_code=303)


@pages.post("/{card_id}/renew-certificates")
async def renew_certificates_submit(request: Request, card_id: str, user: Clerk) -> Response:
    """電子証明書の更新 (in the certificates' last 3 months): new keys on the card, renewals at the CA."""
    form = await _form(request)
    settings = request.app.state.settings
    path = storage.issued_path(settings.data_dir, card_id)
    pins = {
        kind: str(form.get(f"pin_{kind}") or "")
        for kind in ("user_auth", "signature")
        if form.get(f"pin_{kind}")
    }
    from kiban.jpki.keys import keystore_from_settings

    try:
        if not path.is_file():
            raise CardsError(
                "card_id", "not_found", "the holder's card file is not at this counter", status=404
            )
        soft = SoftCard.open(path, str(form.get("holder_passphrase") or ""))
        with unit(request) as s:
            service.renew_certificates(
                s,
                _actor(user),
                card_id,
                soft=soft,
                identity=IdentityCheck(tuple(form["documents"]), user.username),
                pins=pins,
                keystore=keystore_from_settings(settings),
            )
    except (CardsError, CardError) as exc:
        with unit(request) as s:
            return _card_page(request, s, user, card_id, error=_message(exc), status_code=_status(exc))
    return RedirectResponse(f"/cards/{card_id}?done=renew-certificates", status_code=303)


@pages.post("/{card_id}/extend-stay")
async def extend_stay_submit(request: Request, card_id: str, user: Clerk) -> Response:
    """在留期間の更新: the card's expiry follows the register's new 在留期間の満了日."""
    form = await _form(request)
    try:
        with unit(request) as s:
            service.extend_stay(
                s, _actor(user), card_id, identity=IdentityCheck(tuple(form["documents"]), user.username)
            )
    except CardsError as exc:
        with unit(request) as s:
            return _card_page(request, s, user, card_id, error=_message(exc), status_code=_status(exc))
    return RedirectResponse(f"/cards/{card_id}?done=extend-stay", status_code=303)


@pages.post("/{card_id}/reset-pin")
async def reset_pin_submit(request: Request, card_id: str, user: Clerk) -> Response:
    form = await _form(request)
    path: Path = storage.issued_path(request.app.state.settings.data_dir, card_id)
    try:
        if not path.is_file():
            raise CardsError(
                "card_id", "not_found", "the holder's card file is not at this counter", status=404
            )
        soft = SoftCard.open(path, str(form.get("holder_passphrase") or ""))
        with unit(request) as s:
            service.reset_pin(
                s,
                _actor(user),
                card_id,
                soft=soft,
                identity=IdentityCheck(tuple(form["documents"]), user.username),
                kind=str(form.get("kind") or ""),
                new_pin=str(form.get("new_pin") or ""),
            )
    except (CardsError, CardError) as exc:
        with unit(request) as s:
            return _card_page(request, s, user, card_id, error=_message(exc), status_code=_status(exc))
    return RedirectResponse(f"/cards/{card_id}?done=reset-pin", status_code=303)


# --------------------------------------------------------------------------- call centre


def _call_page(
    request: Request,
    user: CurrentUser,
    *,
    error: str | None = None,
    done: str | None = None,
    current: int | None = None,
    status_code: int = 200,
) -> Response:
    with unit(request) as s:
        now = service.aware_now(None)
        start = datetime.combine(service.today_jst(now), datetime.min.time(), service.JST)
        report = callcentre.answer_rate(s, start, start + timedelta(days=1))
        return render(
            request,
            "cards/callcentre.html",
            {
                "waiting": callcentre.waiting(s),
                "report": report,
                "current": current,
                "error": error,
                "done": done,
            },
            status_code=status_code,
        )


@pages.post("/call-centre/calls")
async def call_receive(request: Request, user: Agent) -> Response:
    """A call rings (the telephony system's hook; the demo presses a button)."""
    with unit(request) as s:
        callcentre.receive_call(s)
    return RedirectResponse("/cards/call-centre", status_code=303)


@pages.post("/call-centre/calls/{call_id}/{action}")
async def call_action(request: Request, call_id: int, action: str, user: Agent) -> Response:
    form = await _form(request)
    card_id = str(form.get("card_id") or "")
    done: str | None = None
    try:
        with unit(request) as s:
            actor = _actor(user)
            if action == "answer":
                callcentre.answer_call(s, actor, call_id)
                done = "応答しました。"
            elif action == "identify":
                from datetime import date

                try:
                    birth = date.fromisoformat(str(form.get("birth_date") or ""))
                except ValueError:
                    raise CardsError("birth_date", "format", "a date like 1980-01-31") from None
                answers = callcentre.KnowledgeAnswers(
                    birth, str(form.get("name_kana") or ""), str(form.get("town") or "")
                )
                ok = callcentre.identify_caller(s, actor, call_id, card_id, answers)
                done = "本人確認ができました。" if ok else "回答が登録内容と一致しません。"
            elif action == "suspend":
                callcentre.suspend_by_call(
                    s,
                    actor,
                    call_id,
                    card_id,
                    reason=str(form.get("reason") or "lost"),
                    request_id=str(form.get("request_id") or "") or None,
                )
                done = f"カード {card_id} を一時停止しました。電子証明書も一時保留になります。"
            elif action == "found":
                callcentre.found_by_call(s, actor, call_id, card_id)
                done = f"カード {card_id} の発見を記録しました。電子証明書は窓口で再発行してください。"
            else:
                raise CardsError("action", "unknown_action", "answer, identify, suspend or found", status=404)
    except CardsError as exc:
        return _call_page(request, user, error=_message(exc), current=call_id, status_code=_status(exc))
    return _call_page(request, user, done=done, current=call_id)


def register_web(app: FastAPI) -> None:
    app.include_router(router)
    app.include_router(pages)
    add_nav_item(app, NavItem("カード交付", "/cards", roles=("clerk",)))
    add_nav_item(app, NavItem("コールセンター", "/cards/call-centre", roles=("call_centre",)))

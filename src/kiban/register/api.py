"""The register's web face: a JSON API under ``/api/register`` and the clerk's pages under ``/register``.

Both call the same service functions (:mod:`kiban.register.service`, seals, taxes, and
:mod:`kiban.register.issuance` for documents) with the logged-in clerk as the actor: a clerk
acts only on their own municipality. Each request is one transaction; a refused command rolls
back and changes nothing, except that a refusal because of a DV等支援措置 keeps its audit entry.

Errors: a broken rule is a problem document naming the field and the rule (422), a stale
``version`` is 409, another municipality's resident 403, an unknown one 404. The pages show the
same errors in Japanese beside the field, keeping what was typed.
"""

import re
import unicodedata
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.datastructures import FormData
from starlette.datastructures import UploadFile as StarletteUpload
from starlette.responses import Response

from kiban.core import audit, master
from kiban.core.documents import KeyDirectorySigners, SignerProvider
from kiban.core.identifiers import IndividualNumberCipher
from kiban.core.wareki import to_wareki
from kiban.register import issuance, schemas, service
from kiban.register.documents import ENTRY_ITEMS, CopyOptions, IssuedPdf, Requester
from kiban.register.models import CHANGE_KIND_JA, Household, MoveOutCertificate, MoveOutStatus, Resident
from kiban.register.rules import AccessDenied, RegisterError
from kiban.register.seals import service as seals
from kiban.register.taxes import service as taxes
from kiban.web.app import NavItem, add_nav_item, render
from kiban.web.auth import CurrentUser, require_role
from kiban.web.problems import FieldError, Problem, validation_problem

__all__ = ["EVENTS", "RULES_JA", "register_web", "router", "pages"]

MASK = "＊＊＊＊ ＊＊＊＊ ＊＊＊＊"
MAX_UPLOAD_BYTES = seals.DEFAULT_MAX_BYTES

# Japanese wording of the rules the clerk may meet (pydantic's, the service's, seals', taxes').
RULES_JA: dict[str, str] = {
    "missing": "必須項目です。",
    "required": "必須項目です。",
    "date_parsing": "正しい日付を入力してください（例: 2025-04-01）。",
    "date_from_datetime_parsing": "正しい日付を入力してください（例: 2025-04-01）。",
    "date_from_datetime_inexact": "正しい日付を入力してください（例: 2025-04-01）。",
    "date_type": "正しい日付を入力してください（例: 2025-04-01）。",
    "date": "正しい日付を入力してください（例: 2025-04-01）。",
    "future_date": "未来の日付は入力できません。",
    "after_notification": "異動日が届出日より後になっています。",
    "before_birth": "生年月日より前の日付です。",
    "birth_after_death": "死亡日より後の出生は記録できません。",
    "before_departure": "転出日より前の日付です。",
    "katakana_only": "カタカナ（またはひらがな）で入力してください。",
    "surrounding_space": "前後に空白を入れないでください。",
    "control_characters": "使用できない制御文字が含まれています。",
    "max_length": "文字数が多すぎます。",
    "string_too_long": "文字数が多すぎます。",
    "string_too_short": "入力してください。",
    "too_short": "一つ以上指定してください。",
    "too_long": "指定が多すぎます。",
    "string_pattern_mismatch": (
        "形式が正しくありません（郵便番号は7桁の数字、在留カード番号は英字2桁・数字8桁・英字2桁）。"
    ),
    "literal_error": "選択肢から選んでください。",
    "int_parsing": "半角の整数で入力してください。",
    "int_type": "半角の整数で入力してください。",
    "integer": "整数で入力してください。",
    "bool_parsing": "はい・いいえで指定してください。",
    "extra_forbidden": "この項目は指定できません。",
    "length": "桁数が正しくありません。",
    "digits_only": "数字だけで入力してください。",
    "check_digit": "検査数字が一致しません。番号を確かめてください。",
    "pattern": "番号の形式が正しくありません。",
    "stale_version": "他の職員が先にこの住民票を更新しました。最新の内容を表示してから入力し直してください。",
    "own_municipality": "担当する市区町村の住民ではありません。",
    "not_in_municipality": "担当する市区町村の住民ではありません。",
    "not_found": "該当する住民票がありません。",
    "dead_or_removed": "消除された住民票（除票）です。",
    "not_removed": "この住民票は消除されていません。",
    "one_active_record": "この方はすでに住民登録されています。",
    "one_head": "世帯主はちょうど一人でなければなりません。",
    "head_required": "残る世帯員の新しい世帯主を指定してください。",
    "minor_head": "未成年者は、ほかに成人がいる世帯の世帯主にはなれません。",
    "relationship_required": "続柄を指定してください。",
    "already_head": "すでに世帯主です。",
    "already_member": "すでにその世帯の世帯員です。",
    "not_a_member": "その世帯の世帯員ではありません。",
    "not_a_mover": "異動する人ではありません。",
    "same_household": "同じ世帯の人を指定してください。",
    "whole_household": "世帯全員を指定してください。",
    "split_makes_new": "世帯分離では新しい世帯の世帯主を指定してください。",
    "duplicate": "同じ人が二度指定されています。",
    "other_municipality": "同じ市区町村内の移転は転居です。",
    "move_out_required": "この方の転出証明書情報が届いていません。",
    "move_out_already_completed": "この転出はすでに転入済みです。",
    "identity_mismatch": "転出証明書の内容と一致しません。",
    "foreign_only": "外国人住民のみの項目です。",
    "nationals_only": "日本国籍の方のみの項目です。",
    "one_household": "新しい世帯の世帯主か、加わる世帯のどちらか一方を指定してください。",
    "one_person": "住民票コードか、新しく記載する方の氏名等のどちらか一方を入力してください。",
    "no_change": "変更する項目を入力してください。",
    "correctable_items": "修正できない項目です。",
    "period_order": "終了日が開始日より前です。",
    "past_period": "期間がすでに終わっています。",
    "not_restricted": "この市区町村が行っている支援措置はありません。",
    "dv_restricted": "支援措置の対象者です。本人以外の請求には交付できません。",
    "only_to_the_person": "個人番号は本人または同一世帯員の請求の場合だけ記載できます。",
    "sex": "性別を選んでください。",
    "bool": "はい・いいえで指定してください。",
    "format": "形式が正しくありません。",
    "known_item": "証明する項目を選んでください。",
    "no_seal": "印鑑登録がありません。",
    "no_assessment": "その年度の課税情報がありません。",
    "age": "15歳未満の方は印鑑登録できません。",
    "already_registered": "すでに印鑑登録があります（一人一個）。",
    "not_registered": "印鑑登録がありません。",
    "adult_ward": "成年被後見人は印鑑登録できません。",
    "too_large": "ファイルが大きすぎます（1 MiB まで）。",
    "empty": "ファイルが空です。",
    "decode": "画像として読み取れません。",
    "dimensions": "画像の大きさ（縦横の画素数）が範囲外です。",
    "animated": "動画像は登録できません。",
    "before_residence": "住民となった日より前の日付です。",
    "exceeds_income": "税額が所得を超えています。",
    "non_negative": "0以上の金額を入力してください。",
    "not_active": "消除された住民票（除票）です。",
    "value_error": "値が正しくありません。",
}


def rule_ja(rule: str, message: str = "") -> str:
    return RULES_JA.get(rule) or f"入力内容を確認してください（{rule}）。"


# --- actors, transactions, errors ----------------------------------------------------------------

Clerk = Annotated[CurrentUser, Depends(require_role("clerk"))]


def actor_of(user: CurrentUser) -> schemas.Actor:
    """The service's actor for a logged-in clerk."""
    assert user.municipality_code is not None  # a clerk account always has one
    return schemas.Actor(username=user.username, municipality_code=user.municipality_code, role=user.role)


_RULE_IN_MESSAGE = re.compile(r"\(rule: ([a-z_]+)\)\s*$")
_FIELD_IN_MESSAGE = re.compile(r"^([A-Za-z_.\[\]0-9/]+): ")


def field_errors(errors: Sequence[Mapping[str, Any]], prefix: Sequence[str] = ()) -> list[FieldError]:
    """pydantic errors as (field, rule, message), the service's own rule kept when it raised inside."""
    out: list[FieldError] = []
    for err in errors:
        loc = [str(x) for x in err.get("loc", ())]
        rule = str(err.get("type", "invalid"))
        message = str(err.get("msg", ""))
        inner = (err.get("ctx") or {}).get("error")
        if isinstance(getattr(inner, "rule", None), str):
            rule = str(getattr(inner, "rule", ""))
            message = getattr(inner, "detail", None) or getattr(inner, "message", None) or message
        elif rule == "value_error":
            text = str(inner) if inner is not None else message
            found = _RULE_IN_MESSAGE.search(text)
            if found:
                rule = found.group(1)
                named = _FIELD_IN_MESSAGE.match(text)
                if named and (not loc or loc[-1] != named.group(1).split("/")[0]):
                    loc = [*loc, named.group(1).split("/")[0]]
                message = _RULE_IN_MESSAGE.sub("", _FIELD_IN_MESSAGE.sub("", text)).strip()
        out.append(FieldError(".".join([*prefix, *loc]), rule, message))
    return out


def as_problem(exc: Exception) -> Problem:
    """A domain error as the problem to answer: 403/404/409 where the error says so, else 422."""
    field_name = getattr(exc, "field", "request")
    rule = getattr(exc, "rule", "invalid")
    message = getattr(exc, "detail", None) or getattr(exc, "message", None) or f"{field_name}: rule {rule}"
    status = getattr(exc, "status", 422)
    errors = [FieldError(str(field_name), str(rule), str(message))]
    if status == 409:
        return Problem(409, str(message), slug="stale-version", errors=errors, detail_ja=rule_ja(rule))
    if status == 403:
        slug = "dv-restricted" if rule == "dv_restricted" else "municipality-forbidden"
        return Problem(403, str(message), slug=slug, errors=errors, detail_ja=rule_ja(rule))
    if status == 404:
        return Problem(404, str(message), slug="not-found", errors=errors, detail_ja=rule_ja(rule))
    return validation_problem(errors, str(message))


_DOMAIN_ERRORS = (RegisterError, seals.SealError, taxes.TaxError)


class RegisterRoute(APIRoute):
    """Routes whose body errors keep the service's rule (``katakana_only``, not ``value_error``)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        original = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                return await original(request)
            except RequestValidationError as exc:
                raise validation_problem(field_errors(exc.errors())) from exc
            except ValueError as exc:
                # Domain errors carry their status (403/404/409); others with field and rule are 422.
                if isinstance(getattr(exc, "field", None), str) and isinstance(
                    getattr(exc, "rule", None), str
                ):
                    raise as_problem(exc) from exc
                raise

        return handler


@contextmanager
def unit(request: Request) -> Iterator[Session]:
    """One transaction; a refusal for a DV restriction commits its audit entry and nothing else.

    The service writes that entry just before refusing (nothing else is pending at that point).
    """
    factory = request.app.state.session_factory
    session: Session = factory()
    try:
        yield session
        session.commit()
    except AccessDenied as exc:
        if exc.rule == "dv_restricted":
            session.commit()
        else:
            session.rollback()
        raise
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _cipher(request: Request) -> IndividualNumberCipher:
    return IndividualNumberCipher.from_key_file(request.app.state.settings.keys_dir / "numbering.key")


def _signers(request: Request) -> SignerProvider:
    state = request.app.state
    if getattr(state, "register_signers", None) is None:
        state.register_signers = KeyDirectorySigners(state.settings.keys_dir)
    signers: SignerProvider = state.register_signers
    return signers


# --- the events ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FormField:
    """One input of an event form. ``name`` is the command's dotted path (``person.family_name``).

    Kinds: text, date, code, codes (several 住民票コード), sex, checkbox, relationships
    (lines of「住民票コード 続柄」), textarea, select, certificates (received 転出証明書情報), hidden.
    """

    name: str
    label: str
    kind: str = "text"
    required: bool = False
    hint: str = ""
    options: tuple[tuple[str, str], ...] = ()
    default: str = ""


@dataclass(frozen=True)
class EventSpec:
    slug: str
    title: str
    command: type[BaseModel]
    run: Callable[..., schemas.EventResult]
    fields: tuple[FormField, ...]
    prefill: str = ""  # the field that takes the 住民票コード of the record the clerk came from
    needs_number: bool = False  # a new person: 住民票コード and 個人番号 are issued
    description: str = ""
    group: str = "異動"


DATES = (
    FormField("notified_on", "届出日", "date", True),
    FormField("effective_on", "異動日", "date", True),
    FormField("reason", "備考（異動の理由）", "textarea"),
)
ADDRESS = (
    FormField("address.postal_code", "郵便番号", hint="7桁の数字（ハイフンなし）"),
    FormField("address.town", "町字", required=True, hint="例: 丸の内一丁目"),
    FormField("address.banchi", "番地", required=True, hint="例: 1番1号"),
    FormField("address.katagaki", "方書", hint="建物名・部屋番号"),
)
HOUSEHOLD = (
    FormField("household.head_code", "新しい世帯の世帯主（住民票コード）", "code"),
    FormField("household.join_household_of", "加わる世帯（その世帯の人の住民票コード）", "code"),
    FormField(
        "household.relationships",
        "続柄",
        "relationships",
        hint="1行に「住民票コード 続柄」（例: 12345678901 妻）",
    ),
)
STAY = (
    FormField(
        "stay.new_head_code", "残る世帯の新しい世帯主（住民票コード）", "code", hint="世帯主が異動するとき"
    ),
    FormField(
        "stay.relationships", "残る世帯員の新しい続柄", "relationships", hint="1行に「住民票コード 続柄」"
    ),
)
SEX = FormField("person.sex", "性別", "sex", True, options=(("1", "男"), ("2", "女")))
NAMES = (
    FormField("person.family_name", "氏", required=True),
    FormField("person.given_name", "名", required=True),
    FormField("person.family_name_kana", "氏（フリガナ）", required=True, hint="カタカナ"),
    FormField("person.given_name_kana", "名（フリガナ）", required=True, hint="カタカナ"),
    SEX,
)
NATIONAL = (
    FormField("person.honseki", "本籍"),
    FormField("person.hittousha", "筆頭者"),
)
FOREIGN = (
    FormField("person.nationality", "国籍・地域", hint="外国人住民のみ"),
    FormField("person.residence_status", "在留資格", hint="外国人住民のみ"),
    FormField("person.period_of_stay_end", "在留期間の満了の日", "date"),
    FormField("person.residence_card_number", "在留カード等番号", hint="例: AB12345678CD"),
    FormField("person.alias", "通称"),
    FormField("person.alias_kana", "通称（フリガナ）"),
    FormField("person.romaji_name", "ローマ字氏名"),
)
TARGET = (
    FormField("target.resident_code", "住民票コード", "code", True),
    FormField("target.version", "", "hidden"),
)
TARGETS = (
    FormField(
        "targets", "異動する人の住民票コード", "codes", True, hint="複数のときは空白か改行で区切ります"
    ),
    FormField("version", "", "hidden"),
)


def _dates(effective_label: str = "異動日") -> tuple[FormField, ...]:
    return (DATES[0], FormField("effective_on", effective_label, "date", True), DATES[2])


EVENTS: dict[str, EventSpec] = {
    spec.slug: spec
    for spec in (
        EventSpec(
            "birth",
            "出生",
            schemas.Birth,
            service.birth,
            (
                FormField("household_of", "入る世帯（父母など世帯員の住民票コード）", "code", True),
                FormField("relationship", "続柄", default="子", required=True),
                *NAMES,
                *NATIONAL,
                *_dates("出生日"),
            ),
            prefill="household_of",
            needs_number=True,
            description="出生届により新しい住民票を作成します。住民票コードと個人番号が付番されます。",
        ),
        EventSpec(
            "death",
            "死亡",
            schemas.Death,
            service.death,
            (*TARGET, STAY[0], STAY[1], *_dates("死亡日")),
            prefill="target.resident_code",
            description="死亡届により住民票を消除します（除票として保存されます）。",
        ),
        EventSpec(
            "move-out",
            "転出",
            schemas.MoveOut,
            service.move_out,
            (
                *TARGETS,
                FormField("destination_municipality_code", "転出先の団体コード", "code", True, hint="6桁"),
                FormField("destination_address", "転出先の住所", required=True),
                *STAY,
                *_dates("転出予定日"),
            ),
            prefill="targets",
            description="転出届を受け付け、転出証明書情報を転出先へ送ります。",
        ),
        EventSpec(
            "move-in",
            "転入",
            schemas.MoveIn,
            service.move_in,
            (
                FormField("persons", "転入する人（届いた転出証明書情報から選択）", "certificates", True),
                *ADDRESS,
                *HOUSEHOLD,
                *_dates("転入日"),
            ),
            description="届いた転出証明書情報に基づいて転入を記録します。",
        ),
        EventSpec(
            "relocation",
            "転居",
            schemas.Relocation,
            service.relocation,
            (*TARGETS, *ADDRESS, *HOUSEHOLD, *STAY, *_dates("転居日")),
            prefill="targets",
            description="同じ市区町村の中での住所の変更です。",
        ),
        EventSpec(
            "emigration",
            "国外転出",
            schemas.Emigration,
            service.emigration,
            (
                *TARGETS,
                FormField("destination_country", "転出先の国・地域", required=True),
                *STAY,
                *_dates("転出予定日"),
            ),
            prefill="targets",
        ),
        EventSpec(
            "immigration",
            "国外からの転入",
            schemas.Immigration,
            service.immigration,
            (
                FormField("resident_code", "住民票コード（以前住民だった方）", "code"),
                FormField("person.family_name", "氏（初めての方）"),
                FormField("person.given_name", "名（初めての方）"),
                FormField("person.family_name_kana", "氏（フリガナ）"),
                FormField("person.given_name_kana", "名（フリガナ）"),
                FormField("person.sex", "性別（初めての方）", "sex", options=SEX.options),
                FormField("birth_date", "生年月日（初めての方）", "date"),
                *NATIONAL,
                *FOREIGN,
                FormField("previous_address", "転入前の住所（国外）", required=True),
                *ADDRESS,
                *HOUSEHOLD,
                *_dates("転入日"),
            ),
            prefill="resident_code",
            needs_number=True,
        ),
        EventSpec(
            "household-split",
            "世帯分離",
            schemas.HouseholdSplit,
            service.household_split,
            (*TARGETS, *HOUSEHOLD[0:1], HOUSEHOLD[2], *STAY, *DATES),
            prefill="targets",
            group="世帯変更",
        ),
        EventSpec(
            "household-merge",
            "世帯合併",
            schemas.HouseholdMerge,
            service.household_merge,
            (*TARGETS, *HOUSEHOLD[1:], *STAY, *DATES),
            prefill="targets",
            group="世帯変更",
        ),
        EventSpec(
            "head-change",
            "世帯主変更",
            schemas.HeadChange,
            service.head_change,
            (
                FormField("new_head.resident_code", "新しい世帯主の住民票コード", "code", True),
                FormField("new_head.version", "", "hidden"),
                FormField(
                    "relationships",
                    "続柄（前の世帯主は必須）",
                    "relationships",
                    hint="1行に「住民票コード 続柄」",
                ),
                *DATES,
            ),
            prefill="new_head.resident_code",
            group="世帯変更",
        ),
        EventSpec(
            "name-change",
            "氏名変更",
            schemas.NameChange,
            service.name_change,
            (
                *TARGET,
                FormField("family_name", "新しい氏"),
                FormField("given_name", "新しい名"),
                FormField("family_name_kana", "新しい氏（フリガナ）"),
                FormField("given_name_kana", "新しい名（フリガナ）"),
                FormField("keep_old_family_name", "旧氏を記載する", "checkbox"),
                *DATES,
            ),
            prefill="target.resident_code",
        ),
        EventSpec(
            "ex-officio-entry",
            "職権記載",
            schemas.ExOfficioEntry,
            service.ex_officio_entry,
            (
                *NAMES,
                FormField("birth_date", "生年月日", "date", True),
                *NATIONAL,
                *FOREIGN,
                *ADDRESS,
                *HOUSEHOLD,
                FormField("previous_address", "従前の住所"),
                *DATES,
            ),
            needs_number=True,
            group="職権",
        ),
        EventSpec(
            "ex-officio-correction",
            "職権修正",
            schemas.ExOfficioCorrection,
            service.ex_officio_correction,
            (
                *TARGET,
                FormField(
                    "item",
                    "修正する項目",
                    "select",
                    True,
                    options=tuple((k, k) for k in schemas.CORRECTABLE),
                ),
                FormField(
                    "value",
                    "修正後の値",
                    hint="日付は 2025-04-01、性別は 1（男）か 2（女）、はい/いいえは true/false",
                ),
                *DATES,
            ),
            prefill="target.resident_code",
            group="職権",
        ),
        EventSpec(
            "ex-officio-removal",
            "職権消除",
            schemas.ExOfficioRemoval,
            service.ex_officio_removal,
            (*TARGET, *STAY, DATES[0], DATES[1], FormField("reason", "消除の理由", "textarea", True)),
            prefill="target.resident_code",
            group="職権",
        ),
        EventSpec(
            "ex-officio-restoration",
            "職権回復",
            schemas.ExOfficioRestoration,
            service.ex_officio_restoration,
            (*TARGET, FormField("relationship", "続柄（元の世帯主が戻るとき）"), *DATES),
            prefill="target.resident_code",
            group="職権",
        ),
        EventSpec(
            "resident-code-change",
            "住民票コード変更",
            schemas.ResidentCodeChange,
            service.resident_code_change,
            (*TARGET, *DATES),
            prefill="target.resident_code",
            group="職権",
        ),
    )
}


def run_event(
    request: Request, spec: EventSpec, session: Session, user: CurrentUser, command: BaseModel
) -> schemas.EventResult:
    kwargs: dict[str, Any] = {}
    if spec.needs_number:
        kwargs["cipher"] = _cipher(request)
    return spec.run(session, actor_of(user), command, **kwargs)


# --- JSON API ------------------------------------------------------------------------------------

router = APIRouter(prefix="/api/register", tags=["register"], route_class=RegisterRoute)


class HouseholdMember(BaseModel):
    resident_code: str
    family_name: str
    given_name: str
    relationship: str
    birth_date: date
    is_head: bool


class RecordResponse(BaseModel):
    """A 住民票 with its household and 異動履歴. The 個人番号 is masked unless revealed (audited)."""

    record: schemas.ResidentView
    individual_number_revealed: bool
    household: list[HouseholdMember]
    history: list[schemas.HistoryEntry]
    seal_card_number: str | None = None


class RevealedNumber(BaseModel):
    resident_code: str
    individual_number: str | None


class SealResult(BaseModel):
    resident_code: str
    card_number: str
    registered_on: date


class SealAbolition(BaseModel):
    reason: str = Field(min_length=1, max_length=200)
    notified_on: date


class TaxRecord(BaseModel):
    """個人住民税の課税情報 of one 年度 (whole yen)."""

    fiscal_year: int
    taxable_income: int
    income_total: int
    tax_amount: int
    notes: str | None = Field(default=None, max_length=200)


class TaxResult(BaseModel):
    resident_code: str
    fiscal_year: int
    version: int


class RestrictionResult(BaseModel):
    restriction_id: str | None = None
    lifted: int | None = None


DocumentKind = Literal[
    "resident-copy",
    "entry-certificate",
    "removed-record-copy",
    "move-out-certificate",
    "seal-certificate",
    "tax-certificate",
]
DOCUMENT_TITLES: dict[str, str] = {
    "resident-copy": "住民票の写し",
    "entry-certificate": "住民票記載事項証明書",
    "removed-record-copy": "除票の写し",
    "move-out-certificate": "転出証明書",
    "seal-certificate": "印鑑登録証明書",
    "tax-certificate": "所得・課税証明書",
}


class PrintOptions(BaseModel):
    """Items printed only on request (住民票の写し, 除票の写し)."""

    model_config = schemas.ConfigDict(extra="forbid")

    honseki: bool = False
    relationship: bool = False
    resident_code: bool = False
    individual_number: bool = False


class DocumentRequest(BaseModel):
    """A request at the counter: whose document, for whom, with which items."""

    model_config = schemas.ConfigDict(extra="forbid")

    resident_code: str
    requester: Requester = Requester.SELF
    household: bool = False
    options: PrintOptions = Field(default_factory=PrintOptions)
    items: list[str] = Field(default_factory=list)  # 住民票記載事項証明書: keys of ENTRY_ITEMS
    fiscal_year: int | None = None  # 所得・課税証明書


def household_of(session: Session, actor: schemas.Actor, r: Resident) -> list[HouseholdMember]:
    """The active members of ``r``'s household (names and 続柄 only), each read audited."""
    members = list(
        session.scalars(
            select(Resident).where(Resident.household_id == r.household_id, Resident.status == "active")
        )
    )
    household = session.get(Household, r.household_id)
    head_id = household.head_resident_id if household else None
    members.sort(key=lambda m: (m.id != head_id, m.birth_date, m.resident_code))
    audit.record_many(
        session,
        [
            {
                "actor": actor.username,
                "role": actor.role,
                "action": "read",
                "purpose": "住民記録の事務（窓口・世帯員の表示）",
                "subject": m.resident_code,
                "items": ["氏名", "続柄", "生年月日"],
                "organisation": actor.municipality_code,
            }
            for m in members
            if m.id != r.id
        ],
    )
    return [
        HouseholdMember(
            resident_code=m.resident_code,
            family_name=m.family_name,
            given_name=m.given_name,
            relationship=m.relationship,
            birth_date=m.birth_date,
            is_head=m.id == head_id,
        )
        for m in members
    ]


def _row(session: Session, view: schemas.ResidentView) -> Resident:
    row = session.get(Resident, view.id)
    assert row is not None
    return row


def load_record(session: Session, user: CurrentUser, resident_code: str) -> RecordResponse:
    actor = actor_of(user)
    view = service.get_record(session, actor, resident_code)
    row = _row(session, view)
    members = household_of(session, actor, row) if row.status == "active" else []
    history = service.history(session, actor, view.resident_code)
    seal = None
    if row.status == "active":
        registration = seals.active_seal(
            session, view.resident_code, actor=actor, purpose="住民記録の事務（窓口）"
        )
        seal = seals.format_card_number(registration.card_number) if registration else None
    masked = view.model_copy(update={"individual_number": MASK if view.individual_number else None})
    return RecordResponse(
        record=masked,
        individual_number_revealed=False,
        household=members,
        history=history,
        seal_card_number=seal,
    )


def reveal_number(session: Session, user: CurrentUser, resident_code: str) -> RevealedNumber:
    """The 個人番号 in clear, on the clerk's explicit request; the read is audited as such."""
    actor = actor_of(user)
    view = service.get_record(session, actor, resident_code)
    audit.audited_read(
        session,
        actor=actor.username,
        role=actor.role,
        purpose="個人番号の表示（職員の明示的な操作）",
        subject=view.resident_code,
        items=["個人番号"],
        organisation=actor.municipality_code,
        flags=["dv_restricted"] if view.restricted else [],
    )
    return RevealedNumber(resident_code=view.resident_code, individual_number=view.individual_number)


def _check_own(session: Session, user: CurrentUser, resident_code: str) -> None:
    issuance.records_here(session, actor_of(user), resident_code)  # 403 / 404 with a clear rule


@router.get("/residents", summary="Search the register (検索)", response_model=schemas.SearchPage)
def api_search(
    request: Request,
    user: Clerk,
    name: str | None = None,
    birth_date: date | None = None,
    address: str | None = None,
    resident_code: str | None = None,
    include_removed: bool = False,
    page: Annotated[int, Query(ge=1)] = 1,
    page_size: Annotated[int, Query(ge=1, le=100)] = 20,
) -> schemas.SearchPage:
    try:
        query = schemas.SearchQuery(
            name=name or None,
            birth_date=birth_date,
            address=address or None,
            resident_code=resident_code or None,
            include_removed=include_removed,
            page=page,
            page_size=page_size,
        )
    except ValidationError as exc:
        raise validation_problem(field_errors(exc.errors(), ("query",))) from exc
    with unit(request) as session:
        return service.search(session, actor_of(user), query)


@router.get(
    "/residents/{resident_code}", summary="A 住民票 with household and history", response_model=RecordResponse
)
def api_record(request: Request, resident_code: str, user: Clerk) -> RecordResponse:
    with unit(request) as session:
        return load_record(session, user, resident_code)


@router.post(
    "/residents/{resident_code}/individual-number",
    summary="Reveal the 個人番号 (audited)",
    response_model=RevealedNumber,
)
def api_reveal(request: Request, resident_code: str, user: Clerk) -> RevealedNumber:
    with unit(request) as session:
        return reveal_number(session, user, resident_code)


@router.get(
    "/residents/{resident_code}/history", summary="異動履歴", response_model=list[schemas.HistoryEntry]
)
def api_history(request: Request, resident_code: str, user: Clerk) -> list[schemas.HistoryEntry]:
    with unit(request) as session:
        _check_own(session, user, resident_code)
        return service.history(session, actor_of(user), resident_code)


@router.get(
    "/residents/{resident_code}/removed",
    summary="除票 of the person here, newest first",
    response_model=list[schemas.ResidentView],
)
def api_removed(request: Request, resident_code: str, user: Clerk) -> list[schemas.ResidentView]:
    with unit(request) as session:
        _check_own(session, user, resident_code)
        rows = service.removed_records(session, actor_of(user), resident_code)
        return [
            r.model_copy(update={"individual_number": MASK if r.individual_number else None}) for r in rows
        ]


def pending_moves_in(session: Session, user: CurrentUser) -> list[schemas.MoveOutCertificateInfo]:
    """転出証明書情報 received by the clerk's municipality and waiting for their 転入 (audited)."""
    actor = actor_of(user)
    rows = list(
        session.scalars(
            select(MoveOutCertificate)
            .where(
                MoveOutCertificate.role == "received",
                MoveOutCertificate.holder_municipality_code == actor.municipality_code,
                MoveOutCertificate.status == MoveOutStatus.PENDING.value,
            )
            .order_by(MoveOutCertificate.planned_move_on, MoveOutCertificate.resident_code)
        )
    )
    audit.record_many(
        session,
        [
            {
                "actor": actor.username,
                "role": actor.role,
                "action": "read",
                "purpose": "転入届の受付（転出証明書情報の確認）",
                "subject": row.resident_code,
                "items": ["転出証明書情報"],
                "organisation": actor.municipality_code,
            }
            for row in rows
        ],
    )
    return [schemas.MoveOutCertificateInfo.model_validate(row, from_attributes=True) for row in rows]


def _masked_certificate(info: schemas.MoveOutCertificateInfo) -> schemas.MoveOutCertificateInfo:
    payload = dict(info.payload)
    if payload.get("individual_number"):
        payload["individual_number"] = MASK
    return info.model_copy(update={"payload": payload})


@router.get(
    "/moves-in/pending",
    summary="Received 転出証明書情報 waiting for their 転入",
    response_model=list[schemas.MoveOutCertificateInfo],
)
def api_pending_moves_in(request: Request, user: Clerk) -> list[schemas.MoveOutCertificateInfo]:
    with unit(request) as session:
        return [_masked_certificate(c) for c in pending_moves_in(session, user)]


@router.get(
    "/moves-out/overdue",
    summary="転出 without a 転入 more than 14 days after the move",
    response_model=list[schemas.MoveOutCertificateInfo],
)
def api_overdue(request: Request, user: Clerk) -> list[schemas.MoveOutCertificateInfo]:
    with unit(request) as session:
        assert user.municipality_code is not None
        rows = service.overdue_moves_out(session, user.municipality_code, service.today_jst())
        return [_masked_certificate(c) for c in rows]


def _event_endpoint(spec: EventSpec) -> Callable[..., schemas.EventResult]:
    model = spec.command

    def endpoint(request: Request, command: model, user: Clerk) -> schemas.EventResult:  # type: ignore[valid-type]
        with unit(request) as session:
            return run_event(request, spec, session, user, command)

    endpoint.__name__ = "event_" + spec.slug.replace("-", "_")
    return endpoint


for _event in EVENTS.values():
    router.add_api_route(
        f"/events/{_event.slug}",
        _event_endpoint(_event),
        methods=["POST"],
        response_model=schemas.EventResult,
        summary=f"{_event.title} ({_event.command.__name__})",
        responses={409: {"description": "The record changed since the clerk read it (stale version)"}},
    )


async def _read_upload(upload: StarletteUpload) -> bytes:
    # Read one byte past the limit: enough to refuse without holding a huge upload in memory.
    data = await upload.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise seals.SealError("image", "too_large", f"the seal image is larger than {MAX_UPLOAD_BYTES} bytes")
    return data


def _day(value: str, field_name: str) -> date:
    try:
        return date.fromisoformat(unicodedata.normalize("NFKC", value).strip())
    except ValueError as exc:
        raise RegisterError(field_name, "date", "must be a date (YYYY-MM-DD)") from exc


@router.post(
    "/residents/{resident_code}/seal", summary="印鑑登録 (multipart: image)", response_model=SealResult
)
async def api_register_seal(
    request: Request,
    resident_code: str,
    user: Clerk,
    image: Annotated[UploadFile, File()],
    notified_on: Annotated[str, Form()],
    adult_ward: Annotated[bool, Form()] = False,
) -> SealResult:
    data = await _read_upload(image)
    day = _day(notified_on, "notified_on")
    with unit(request) as session:
        _check_own(session, user, resident_code)
        row = seals.register_seal(
            session, actor_of(user), resident_code, data, image.content_type or "", day, adult_ward=adult_ward
        )
        return SealResult(
            resident_code=row.resident_code,
            card_number=seals.format_card_number(row.card_number),
            registered_on=row.registered_on,
        )


@router.post("/residents/{resident_code}/seal/abolish", summary="印鑑登録の廃止", response_model=SealResult)
def api_abolish_seal(request: Request, resident_code: str, body: SealAbolition, user: Clerk) -> SealResult:
    with unit(request) as session:
        _check_own(session, user, resident_code)
        row = seals.abolish_seal(session, actor_of(user), resident_code, body.reason, body.notified_on)
        return SealResult(
            resident_code=row.resident_code,
            card_number=seals.format_card_number(row.card_number),
            registered_on=row.registered_on,
        )


@router.post("/residents/{resident_code}/tax", summary="個人住民税の課税情報", response_model=TaxResult)
def api_tax(request: Request, resident_code: str, body: TaxRecord, user: Clerk) -> TaxResult:
    with unit(request) as session:
        _check_own(session, user, resident_code)
        row = taxes.record_tax_assessment(
            session,
            actor_of(user),
            resident_code,
            body.fiscal_year,
            body.taxable_income,
            body.income_total,
            body.tax_amount,
            body.notes,
        )
        return TaxResult(resident_code=row.resident_code, fiscal_year=row.fiscal_year, version=row.version)


@router.post("/restrictions", summary="DV等支援措置の開始", response_model=RestrictionResult)
def api_set_restriction(request: Request, body: schemas.SetRestriction, user: Clerk) -> RestrictionResult:
    with unit(request) as session:
        _check_own(session, user, body.resident_code)
        return RestrictionResult(restriction_id=str(service.set_restriction(session, actor_of(user), body)))


@router.post("/restrictions/lift", summary="DV等支援措置の終了", response_model=RestrictionResult)
def api_lift_restriction(request: Request, body: schemas.LiftRestriction, user: Clerk) -> RestrictionResult:
    with unit(request) as session:
        _check_own(session, user, body.resident_code)
        return RestrictionResult(lifted=service.lift_restriction(session, actor_of(user), body))


def issue_document(
    request: Request, session: Session, user: CurrentUser, kind: str, body: DocumentRequest
) -> IssuedPdf:
    """Issue one document through :mod:`kiban.register.issuance`."""
    actor = actor_of(user)
    signers = _signers(request)
    options = CopyOptions(**body.options.model_dump())
    if kind == "resident-copy":
        return issuance.resident_copy(
            session, actor, body.resident_code, household=body.household, options=options,
            requester=body.requester, signers=signers,
        )  # fmt: skip
    if kind == "entry-certificate":
        return issuance.entry_certificate(
            session, actor, body.resident_code, body.items, household=body.household,
            requester=body.requester, signers=signers,
        )  # fmt: skip
    if kind == "removed-record-copy":
        return issuance.removed_record_copy(
            session, actor, body.resident_code, options=options, requester=body.requester, signers=signers
        )
    if kind == "move-out-certificate":
        return issuance.move_out_certificate(session, actor, body.resident_code, signers=signers)
    if kind == "seal-certificate":
        return issuance.seal_certificate(
            session, actor, body.resident_code, requester=body.requester, signers=signers
        )
    if body.fiscal_year is None:
        raise RegisterError("fiscal_year", "required", "the 年度 of the tax certificate is required")
    return issuance.tax_certificate(
        session, actor, body.resident_code, body.fiscal_year, requester=body.requester, signers=signers
    )


def pdf_response(printed: IssuedPdf, kind: str) -> Response:
    filename = f"{kind}-{printed.serial}.pdf"
    return Response(
        printed.pdf,
        media_type="application/pdf",
        headers={
            "Content-Disposition": f"inline; filename=\"{filename}\"; filename*=UTF-8''{quote(filename)}",
            "X-Document-Serial": printed.serial,
            "X-Verification-Code": printed.issuance.verification_code,
        },
    )


@router.post(
    "/documents/{kind}",
    summary="Issue a register document (PDF)",
    response_class=Response,
    responses={200: {"content": {"application/pdf": {}}, "description": "The document"}},
)
def api_document(request: Request, kind: DocumentKind, body: DocumentRequest, user: Clerk) -> Response:
    with unit(request) as session:
        printed = issue_document(request, session, user, kind, body)
    return pdf_response(printed, kind)


# --- pages ---------------------------------------------------------------------------------------

pages = APIRouter(prefix="/register", include_in_schema=False, route_class=RegisterRoute)


def _wareki(day: date | None) -> str:
    return to_wareki(day) if day else ""


ITEM_LABELS: dict[str, str] = {
    "resident_code": "住民票コード",
    "family_name": "氏",
    "given_name": "名",
    "family_name_kana": "氏（フリガナ）",
    "given_name_kana": "名（フリガナ）",
    "old_family_name": "旧氏",
    "old_family_name_kana": "旧氏（フリガナ）",
    "alias": "通称",
    "alias_kana": "通称（フリガナ）",
    "romaji_name": "ローマ字氏名",
    "birth_date": "生年月日",
    "sex": "性別",
    "relationship": "続柄",
    "postal_code": "郵便番号",
    "prefecture": "都道府県",
    "municipality": "市区町村",
    "town": "町字",
    "banchi": "番地",
    "katagaki": "方書",
    "address_since": "住所を定めた日",
    "resident_since": "住民となった日",
    "previous_address": "転入前住所",
    "pre_move_address": "異動前住所",
    "honseki": "本籍",
    "hittousha": "筆頭者",
    "nationality": "国籍・地域",
    "residence_status": "在留資格",
    "period_of_stay_end": "在留期間の満了の日",
    "residence_card_number": "在留カード等番号",
    "foreign_resident_since": "外国人住民となった日",
    "elector": "選挙人名簿",
    "national_health_insurance": "国民健康保険",
    "national_pension": "国民年金",
    "status": "状態",
    "removed_reason": "消除事由",
    "removed_on": "消除日",
    "destination": "転出先",
    "starts_on": "支援措置の開始日",
    "ends_on": "支援措置の終了予定日",
}
_HIDDEN_ITEMS = frozenset(
    {"individual_number", "household_id", "municipality_code", "restriction_id", "restriction_ids"}
)


def _shown(name: str, value: Any) -> str:
    if value is None or value == "":
        return "（なし）"
    if isinstance(value, bool):
        return "あり" if value else "なし"
    if name == "sex":
        return {1: "男", 2: "女"}.get(value, str(value))
    if name == "status":
        return {"active": "住民", "removed": "消除"}.get(value, str(value))
    return str(value)


def history_changes(entry: schemas.HistoryEntry) -> list[tuple[str, str, str]]:
    """(item, before, after) in Japanese for one 異動履歴 row; a new record lists what it was given."""
    created = not entry.before
    rows = []
    for name, value in entry.after.items():
        if name in _HIDDEN_ITEMS or (created and value in (None, "", False)):
            continue
        before = "" if created else _shown(name, entry.before.get(name))
        rows.append((ITEM_LABELS.get(name, name), before, _shown(name, value)))
    return rows


def _page(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> Response:
    context.setdefault("wareki", _wareki)
    context.setdefault("kind_ja", CHANGE_KIND_JA)
    context.setdefault("changes", history_changes)
    return render(request, f"register/{name}", context, status_code=status_code)


def _form_value(form: FormData | Mapping[str, Any], name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


_SPLIT = re.compile(r"[\s,、，]+")


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    for part in parts[:-1]:
        data = data.setdefault(part, {})
    data[parts[-1]] = value


def _relationships(text: str, name: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        parts = re.split(r"[\s=:＝：　]+", line, maxsplit=1)
        if len(parts) != 2 or not parts[1]:
            raise RegisterError(name, "format", "each line is 「住民票コード 続柄」")
        result[unicodedata.normalize("NFKC", parts[0])] = parts[1]
    return result


def command_from_form(
    request: Request, session: Session, user: CurrentUser, spec: EventSpec, form: FormData
) -> BaseModel:
    """The command a filled-in form stands for; empty inputs are left out (so "required" shows)."""
    data: dict[str, Any] = {}
    for f in spec.fields:
        raw = _form_value(form, f.name)
        if f.kind == "checkbox":
            if form.get(f.name):
                _set(data, f.name, True)
            continue
        if f.kind == "certificates":
            chosen = [v for v in form.getlist(f.name) if isinstance(v, str) and v]
            received = {c.resident_code: c for c in pending_moves_in(session, user)}
            persons = []
            for code in chosen:
                cert = received.get(code)
                if cert is None:
                    raise RegisterError(f.name, "move_out_required", "no 転出証明書情報 for this person")
                p = cert.payload
                persons.append(
                    {
                        "resident_code": code,
                        "family_name": p["family_name"],
                        "given_name": p["given_name"],
                        "birth_date": p["birth_date"],
                        "sex": p["sex"],
                    }
                )
            if persons:
                data[f.name] = persons
            continue
        if not raw.strip() or f.name == "version":  # "version" goes with the single target ("codes")
            continue
        if f.kind in ("date", "hidden", "code"):
            _set(data, f.name, unicodedata.normalize("NFKC", raw).strip())
        elif f.kind == "sex":
            _set(data, f.name, int(raw) if raw in ("1", "2") else raw)
        elif f.kind == "codes":
            codes = [c for c in _SPLIT.split(unicodedata.normalize("NFKC", raw)) if c]
            version = _form_value(form, "version").strip()
            targets = [{"resident_code": c} for c in codes]
            if len(targets) == 1 and version:
                targets[0]["version"] = version
            data[f.name] = targets
        elif f.kind == "relationships":
            _set(data, f.name, _relationships(raw, f.name))
        elif f.name in ("item", "value", "version"):
            continue
        else:
            _set(data, f.name, raw)
    if spec.slug == "ex-officio-correction":
        item = _form_value(form, "item")
        value: Any = _form_value(form, "value")
        kind = schemas.CORRECTABLE.get(item, "text")
        if value == "":
            value = None
        elif kind.startswith("bool"):
            value = {"true": True, "はい": True, "1": True, "false": False, "いいえ": False, "0": False}.get(
                value.strip(), value
            )
        elif kind.startswith("sex"):
            value = int(value) if value.strip() in ("1", "2") else value
        elif kind.startswith("date"):
            value = unicodedata.normalize("NFKC", value).strip()
        if item:
            data["changes"] = {item: value}
    return spec.command.model_validate(data)


def _errors_by_field(
    spec_fields: Sequence[FormField], errors: Sequence[FieldError]
) -> tuple[dict[str, list[str]], list[str]]:
    names = [f.name for f in spec_fields if f.kind != "hidden"]
    by_field: dict[str, list[str]] = {}
    general: list[str] = []
    for err in errors:
        path = re.sub(r"\[(\d+)\]", r".\1", err.field).removeprefix("body.")
        if path.startswith("changes"):
            path = "value"
        target = next((n for n in names if n == path), None)
        if target is None:
            target = next((n for n in sorted(names, key=len, reverse=True) if path.startswith(n + ".")), None)
        if target is None:
            head = path.split(".")[0]
            target = next((n for n in names if n.split(".")[0] == head and "." not in n), None)
        text = rule_ja(err.rule, err.message)
        if target is None:
            label = path or "入力"
            general.append(f"{label}: {text}" if path else text)
        else:
            by_field.setdefault(target, []).append(text)
    return by_field, general


def _domain_errors(exc: Exception) -> list[FieldError]:
    if isinstance(exc, ValidationError):
        return field_errors(exc.errors())
    return [
        FieldError(
            str(getattr(exc, "field", "")),
            str(getattr(exc, "rule", "invalid")),
            str(getattr(exc, "detail", "") or getattr(exc, "message", "")),
        )
    ]


def _event_page(
    request: Request,
    spec: EventSpec,
    values: Mapping[str, Any],
    *,
    errors: Sequence[FieldError] = (),
    certificates: Sequence[schemas.MoveOutCertificateInfo] = (),
    status_code: int = 200,
) -> Response:
    by_field, general = _errors_by_field(spec.fields, errors)
    return _page(
        request,
        "event_form.html",
        {
            "spec": spec,
            "values": values,
            "field_errors": by_field,
            "general_errors": general,
            "certificates": certificates,
            "today": service.today_jst().isoformat(),
        },
        status_code=status_code,
    )


def _values_of(form: FormData) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key in form:
        items = [v for v in form.getlist(key) if isinstance(v, str)]
        values[key] = items if len(items) > 1 or key in ("persons", "items") else (items[0] if items else "")
    return values


@pages.get("")
def search_page(
    request: Request,
    user: Clerk,
    name: str = "",
    birth_date: str = "",
    address: str = "",
    resident_code: str = "",
    include_removed: str = "",
    page: int = 1,
) -> Response:
    values = {
        "name": name,
        "birth_date": birth_date,
        "address": address,
        "resident_code": resident_code,
        "include_removed": include_removed,
    }
    searched = any(v.strip() for k, v in values.items() if k != "include_removed")
    result = None
    errors: list[FieldError] = []
    if searched:
        try:
            query = schemas.SearchQuery(
                name=name.strip() or None,
                birth_date=unicodedata.normalize("NFKC", birth_date).strip() or None,  # type: ignore[arg-type]
                address=address.strip() or None,
                resident_code=unicodedata.normalize("NFKC", resident_code).strip() or None,
                include_removed=bool(include_removed),
                page=max(page, 1),
            )
        except ValidationError as exc:
            errors = field_errors(exc.errors())
        else:
            with unit(request) as session:
                result = service.search(session, actor_of(user), query)
    by_field, general = _errors_by_field([FormField(k, k) for k in values], errors)
    more = None
    if result is not None and result.page * result.page_size < result.total:
        more = "?" + urlencode({**values, "page": result.page + 1})
    return _page(
        request,
        "search.html",
        {
            "values": values,
            "result": result,
            "field_errors": by_field,
            "general_errors": general,
            "more": more,
        },
        status_code=422 if errors else 200,
    )


def _record_page(
    request: Request, user: CurrentUser, resident_code: str, *, reveal: bool = False, notice: str = ""
) -> Response:
    with unit(request) as session:
        record = load_record(session, user, resident_code)
        number = reveal_number(session, user, resident_code).individual_number if reveal else None
        removed = []
        try:
            removed = (
                service.removed_records(session, actor_of(user), resident_code)
                if record.record.status == "active"
                else []
            )
        except RegisterError:
            removed = []
    return _page(
        request,
        "record.html",
        {
            "r": record.record,
            "record": record,
            "revealed_number": number,
            "events": EVENTS,
            "notice": notice,
            "removed": removed,
            "documents": DOCUMENT_TITLES,
        },
    )


DONE_JA = {slug: f"{spec.title}を記録しました。" for slug, spec in EVENTS.items()} | {
    "seal": "印鑑を登録しました。",
    "seal-abolished": "印鑑登録を廃止しました。",
    "restriction": "支援措置を開始しました。",
    "restriction-lifted": "支援措置を終了しました。",
    "tax": "課税情報を登録しました。",
}


@pages.get("/residents/{resident_code}")
def record_page(request: Request, resident_code: str, user: Clerk, done: str = "") -> Response:
    return _record_page(request, user, resident_code, notice=DONE_JA.get(done, ""))


@pages.post("/residents/{resident_code}/reveal")
def reveal_page(request: Request, resident_code: str, user: Clerk) -> Response:
    return _record_page(request, user, resident_code, reveal=True)


@pages.get("/events")
def events_page(request: Request, user: Clerk, code: str = "", version: str = "") -> Response:
    groups: dict[str, list[EventSpec]] = {}
    for spec in EVENTS.values():
        groups.setdefault(spec.group, []).append(spec)
    return _page(request, "events.html", {"groups": groups, "code": code, "version": version})


def _prefilled(spec: EventSpec, code: str, version: str) -> dict[str, Any]:
    values: dict[str, Any] = {f.name: f.default for f in spec.fields if f.default}
    if code and spec.prefill:
        values[spec.prefill] = code
        if version and spec.prefill in ("targets", "target.resident_code", "new_head.resident_code"):
            key = {"targets": "version", "target.resident_code": "target.version"}.get(
                spec.prefill, "new_head.version"
            )
            values[key] = version
    return values


def _spec(slug: str) -> EventSpec:
    spec = EVENTS.get(slug)
    if spec is None:
        raise Problem(404, "No such event form.", detail_ja="その届出の画面はありません。")
    return spec


@pages.get("/events/{slug}")
def event_form(request: Request, slug: str, user: Clerk, code: str = "", version: str = "") -> Response:
    spec = _spec(slug)
    certificates: list[schemas.MoveOutCertificateInfo] = []
    if spec.slug == "move-in":
        with unit(request) as session:
            certificates = pending_moves_in(session, user)
    return _event_page(request, spec, _prefilled(spec, code, version), certificates=certificates)


def _first_code(result: schemas.EventResult, spec: EventSpec, values: Mapping[str, Any]) -> str:
    active = [r for r in result.records if r.status == "active"]
    chosen = active[0] if active else result.records[0] if result.records else None
    if spec.slug == "birth":
        created = [r for r in result.records if r.status == "active"]
        chosen = created[-1] if created else chosen
    return chosen.resident_code if chosen else ""


@pages.post("/events/{slug}")
async def event_submit(request: Request, slug: str, user: Clerk) -> Response:
    spec = _spec(slug)
    form = await request.form()
    values = _values_of(form)
    try:
        with unit(request) as session:
            command = command_from_form(request, session, user, spec, form)
            result = run_event(request, spec, session, user, command)
    except (ValidationError, *_DOMAIN_ERRORS) as exc:
        certificates: list[schemas.MoveOutCertificateInfo] = []
        if spec.slug == "move-in":
            with unit(request) as session:
                certificates = pending_moves_in(session, user)
        status = getattr(exc, "status", 422)
        return _event_page(
            request, spec, values, errors=_domain_errors(exc), certificates=certificates, status_code=status
        )
    code = _first_code(result, spec, values)
    return RedirectResponse(f"/register/residents/{code}?done={slug}", status_code=303)


# Seal, tax and restriction forms (one page per resident, small forms).


def _resident_form(
    request: Request,
    user: CurrentUser,
    resident_code: str,
    template: str,
    context: dict[str, Any],
    status_code: int = 200,
) -> Response:
    with unit(request) as session:
        record = load_record(session, user, resident_code)
    context = {
        "r": record.record,
        "record": record,
        "values": {},
        "field_errors": {},
        "general_errors": [],
        **context,
    }
    return _page(request, template, context, status_code=status_code)


def _form_errors(exc: Exception, names: Sequence[str]) -> tuple[dict[str, list[str]], list[str]]:
    return _errors_by_field([FormField(n, n) for n in names], _domain_errors(exc))


@pages.get("/residents/{resident_code}/seal")
def seal_form(request: Request, resident_code: str, user: Clerk) -> Response:
    return _resident_form(
        request, user, resident_code, "seal.html", {"today": service.today_jst().isoformat()}
    )


@pages.post("/residents/{resident_code}/seal")
async def seal_submit(request: Request, resident_code: str, user: Clerk) -> Response:
    form = await request.form()
    upload = form.get("image")
    values = {"notified_on": _form_value(form, "notified_on")}
    try:
        if not isinstance(upload, StarletteUpload) or not upload.filename:
            raise seals.SealError("image", "required", "choose the seal image")
        data = await _read_upload(upload)
        day = _day(values["notified_on"], "notified_on")
        with unit(request) as session:
            _check_own(session, user, resident_code)
            seals.register_seal(
                session, actor_of(user), resident_code, data, upload.content_type or "", day,
                adult_ward=bool(form.get("adult_ward")),
            )  # fmt: skip
    except (ValidationError, *_DOMAIN_ERRORS) as exc:
        by_field, general = _form_errors(exc, ["image", "notified_on", "adult_ward"])
        return _resident_form(
            request, user, resident_code, "seal.html",
            {"values": values, "field_errors": by_field, "general_errors": general},
            status_code=getattr(exc, "status", 422),
        )  # fmt: skip
    return RedirectResponse(f"/register/residents/{resident_code}?done=seal", status_code=303)


@pages.post("/residents/{resident_code}/seal/abolish")
async def seal_abolish_submit(request: Request, resident_code: str, user: Clerk) -> Response:
    form = await request.form()
    values = {"reason": _form_value(form, "reason"), "abolish_on": _form_value(form, "abolish_on")}
    try:
        day = _day(values["abolish_on"], "abolish_on")
        with unit(request) as session:
            _check_own(session, user, resident_code)
            seals.abolish_seal(session, actor_of(user), resident_code, values["reason"], day)
    except (ValidationError, *_DOMAIN_ERRORS) as exc:
        by_field, general = _form_errors(exc, ["reason", "abolish_on", "notified_on"])
        by_field.setdefault("abolish_on", []).extend(by_field.pop("notified_on", []))
        return _resident_form(
            request, user, resident_code, "seal.html",
            {"values": values, "field_errors": by_field, "general_errors": general},
            status_code=getattr(exc, "status", 422),
        )  # fmt: skip
    return RedirectResponse(f"/register/residents/{resident_code}?done=seal-abolished", status_code=303)


@pages.get("/residents/{resident_code}/restriction")
def restriction_form(request: Request, resident_code: str, user: Clerk) -> Response:
    return _resident_form(
        request, user, resident_code, "restriction.html", {"today": service.today_jst().isoformat()}
    )


@pages.post("/residents/{resident_code}/restriction")
async def restriction_submit(request: Request, resident_code: str, user: Clerk) -> Response:
    form = await request.form()
    action = _form_value(form, "action")
    names = ["reason", "starts_on", "ends_on", "lifted_on"]
    values = {n: _form_value(form, n) for n in names}
    try:
        with unit(request) as session:
            _check_own(session, user, resident_code)
            if action == "lift":
                lift = schemas.LiftRestriction(
                    resident_code=resident_code,
                    reason=values["reason"],
                    lifted_on=unicodedata.normalize("NFKC", values["lifted_on"]).strip(),  # type: ignore[arg-type]
                )
                service.lift_restriction(session, actor_of(user), lift)
            else:
                command = schemas.SetRestriction(
                    resident_code=resident_code,
                    reason=values["reason"],
                    starts_on=unicodedata.normalize("NFKC", values["starts_on"]).strip(),  # type: ignore[arg-type]
                    ends_on=unicodedata.normalize("NFKC", values["ends_on"]).strip(),  # type: ignore[arg-type]
                )
                service.set_restriction(session, actor_of(user), command)
    except (ValidationError, *_DOMAIN_ERRORS) as exc:
        by_field, general = _form_errors(exc, names)
        return _resident_form(
            request, user, resident_code, "restriction.html",
            {"values": values, "field_errors": by_field, "general_errors": general,
             "today": service.today_jst().isoformat()},
            status_code=getattr(exc, "status", 422),
        )  # fmt: skip
    done = "restriction-lifted" if action == "lift" else "restriction"
    return RedirectResponse(f"/register/residents/{resident_code}?done={done}", status_code=303)


@pages.get("/residents/{resident_code}/tax")
def tax_form(request: Request, resident_code: str, user: Clerk) -> Response:
    return _resident_form(request, user, resident_code, "tax.html", {})


def _yen(value: str, name: str) -> int:
    text = unicodedata.normalize("NFKC", value).replace(",", "").replace("円", "").strip()
    if not text:
        raise taxes.TaxError(name, "required", "required")
    if not text.isdigit():
        raise taxes.TaxError(name, "integer", "must be a whole number of yen")
    return int(text)


@pages.post("/residents/{resident_code}/tax")
async def tax_submit(request: Request, resident_code: str, user: Clerk) -> Response:
    form = await request.form()
    names = ["fiscal_year", "income_total", "taxable_income", "tax_amount", "notes"]
    values = {n: _form_value(form, n) for n in names}
    try:
        figures = {n: _yen(values[n], n) for n in names[:4]}
        with unit(request) as session:
            _check_own(session, user, resident_code)
            taxes.record_tax_assessment(
                session, actor_of(user), resident_code, figures["fiscal_year"], figures["taxable_income"],
                figures["income_total"], figures["tax_amount"], values["notes"] or None,
            )  # fmt: skip
    except (ValidationError, *_DOMAIN_ERRORS) as exc:
        by_field, general = _form_errors(exc, names)
        return _resident_form(
            request, user, resident_code, "tax.html",
            {"values": values, "field_errors": by_field, "general_errors": general},
            status_code=getattr(exc, "status", 422),
        )  # fmt: skip
    return RedirectResponse(f"/register/residents/{resident_code}?done=tax", status_code=303)


# Printing.

REQUESTERS_JA = {r.value: label for r, label in issuance._REQUESTER_JA.items()}


def _print_page(
    request: Request, values: Mapping[str, Any], errors: Sequence[FieldError] = (), status_code: int = 200
) -> Response:
    names = [
        "resident_code",
        "kind",
        "requester",
        "options.individual_number",
        "items",
        "fiscal_year",
        "household",
    ]
    by_field, general = _errors_by_field([FormField(n, n) for n in names], errors)
    return _page(
        request,
        "print.html",
        {
            "values": values,
            "documents": DOCUMENT_TITLES,
            "requesters": REQUESTERS_JA,
            "entry_items": ENTRY_ITEMS,
            "field_errors": by_field,
            "general_errors": general,
            "fiscal_year": taxes.current_fiscal_year(),
        },
        status_code=status_code,
    )


@pages.get("/certificates")
def print_form(request: Request, user: Clerk, code: str = "", kind: str = "resident-copy") -> Response:
    return _print_page(request, {"resident_code": code, "kind": kind, "requester": "self"})


@pages.post("/certificates")
async def print_submit(request: Request, user: Clerk) -> Response:
    form = await request.form()
    values = _values_of(form)
    kind = _form_value(form, "kind")
    try:
        if kind not in DOCUMENT_TITLES:
            raise RegisterError("kind", "required", "choose a document")
        fiscal = unicodedata.normalize("NFKC", _form_value(form, "fiscal_year")).strip()
        body = DocumentRequest.model_validate(
            {
                "resident_code": unicodedata.normalize("NFKC", _form_value(form, "resident_code")).strip(),
                "requester": _form_value(form, "requester") or "self",
                "household": bool(form.get("household")),
                "options": {k: bool(form.get(f"options.{k}")) for k in PrintOptions.model_fields},
                "items": [v for v in form.getlist("items") if isinstance(v, str)],
                "fiscal_year": fiscal or None,
            }
        )
        with unit(request) as session:
            printed = issue_document(request, session, user, kind, body)
    except (ValidationError, *_DOMAIN_ERRORS) as exc:
        values.setdefault("kind", kind)
        return _print_page(request, values, _domain_errors(exc), status_code=getattr(exc, "status", 422))
    return pdf_response(printed, kind)


@pages.get("/moves")
def moves_page(request: Request, user: Clerk) -> Response:
    with unit(request) as session:
        pending = [_masked_certificate(c) for c in pending_moves_in(session, user)]
        assert user.municipality_code is not None
        overdue = [
            _masked_certificate(c)
            for c in service.overdue_moves_out(session, user.municipality_code, service.today_jst())
        ]
    names = {}
    for c in [*pending, *overdue]:
        for code in (c.from_municipality_code, c.to_municipality_code):
            try:
                body = master.municipality(code)
                names[code] = f"{body.prefecture}{body.name}"
            except master.MasterError:
                names[code] = code
    return _page(request, "moves.html", {"pending": pending, "overdue": overdue, "names": names})


def register_web(app: FastAPI) -> None:
    """Plug the register into the app: API, pages, and the clerks' navigation."""
    app.include_router(router)
    app.include_router(pages)
    add_nav_item(app, NavItem("住民検索", "/register", roles=("clerk",)))
    add_nav_item(app, NavItem("異動届", "/register/events", roles=("clerk",)))
    add_nav_item(app, NavItem("転入・転出", "/register/moves", roles=("clerk",)))
    add_nav_item(app, NavItem("証明書の発行", "/register/certificates", roles=("clerk",)))

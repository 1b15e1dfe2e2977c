"""Staff accounts: validation of every field, scrypt hashing, authentication and lockout."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from kiban.core import accounts
from kiban.core.accounts import (
    LOCKOUT_DURATION,
    MAX_FAILED_LOGINS,
    AccountError,
    authenticate,
    create_user,
    hash_password,
    municipality_code_is_valid,
    unlock_user,
    verify_password,
)
from kiban.core.database import utcnow
from kiban.core.models.accounts import User

PASSWORD = "correct horse battery"


def user_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(User)) or 0


# --- municipality codes (SPEC §3) ------------------------------------------------------------


@pytest.mark.parametrize("code", ["011002", "131016", "131041"])
def test_spec_examples_of_municipality_codes_are_valid(code: str) -> None:
    assert municipality_code_is_valid(code)


@pytest.mark.parametrize("code", ["131017", "13101", "1310160", "13101a", "１３１０１６", ""])
def test_wrong_municipality_codes_are_refused(code: str) -> None:
    assert not municipality_code_is_valid(code)


@given(st.text(alphabet="0123456789", min_size=5, max_size=5))
def test_exactly_one_check_digit_completes_five_digits(five: str) -> None:
    valid = [d for d in "0123456789" if municipality_code_is_valid(five + d)]
    assert len(valid) == 1


# --- creating accounts -----------------------------------------------------------------------


def test_clerk_is_bound_to_one_municipality(session: Session) -> None:
    user = create_user(
        session, "yamada", PASSWORD, "clerk", municipality_code="131016", display_name="山田 花子"
    )
    session.commit()
    assert (user.role, user.municipality_code, user.display_name) == ("clerk", "131016", "山田 花子")
    assert user.password_hash.startswith("scrypt$") and PASSWORD not in user.password_hash


@pytest.mark.parametrize(
    ("kwargs", "field", "rule"),
    [
        ({"role": "clerk"}, "municipality_code", "required_for_clerk"),
        ({"role": "clerk", "municipality_code": "131017"}, "municipality_code", "check_digit"),
        ({"role": "clerk", "municipality_code": "999997"}, "municipality_code", "unknown_municipality"),
        ({"role": "clerk", "municipality_code": "13101a"}, "municipality_code", "digits_only"),
        ({"role": "clerk", "municipality_code": "1310160"}, "municipality_code", "max_length"),
        ({"role": "clerk", "municipality_code": "13101\x00"}, "municipality_code", "control_characters"),
        ({"role": "national_operator", "municipality_code": "131016"}, "municipality_code", "clerk_only"),
        ({"role": "agency"}, "organisation", "required_for_role"),
        ({"role": "verifier", "organisation": ""}, "organisation", "required_for_role"),
        ({"role": "agency", "organisation": "年金 機構"}, "organisation", "pattern"),
        ({"role": "admin"}, "role", "enum"),
        ({"role": "call_centre", "username": "<script>alert(1)</script>"}, "username", "pattern"),
        ({"role": "call_centre", "username": "ab\x00cd"}, "username", "control_characters"),
        ({"role": "call_centre", "username": "a" * 1_000_000}, "username", "max_length"),
        ({"role": "call_centre", "username": "Yamada"}, "username", "pattern"),
        ({"role": "call_centre", "username": 12345}, "username", "type"),
        ({"role": "call_centre", "password": "short"}, "password", "min_length"),
        ({"role": "call_centre", "password": "x" * 1025}, "password", "max_length"),
        ({"role": "call_centre", "password": None}, "password", "type"),
        ({"role": "call_centre", "display_name": "   "}, "display_name", "required"),
        ({"role": "call_centre", "display_name": "a\x1bb"}, "display_name", "control_characters"),
    ],
)
def test_bad_input_names_field_and_rule_and_changes_nothing(
    session: Session, kwargs: dict[str, object], field: str, rule: str
) -> None:
    args: dict[str, object] = {"username": "someone", "password": PASSWORD, **kwargs}
    with pytest.raises(AccountError) as caught:
        create_user(session, **args)  # type: ignore[arg-type]
    assert (caught.value.field, caught.value.rule) == (field, rule)
    assert user_count(session) == 0


def test_full_width_municipality_codes_are_normalised(session: Session) -> None:
    user = create_user(session, "kana", PASSWORD, "clerk", municipality_code="１３１０４１")
    assert user.municipality_code == "131041"


def test_usernames_are_unique(session: Session) -> None:
    create_user(session, "tanaka", PASSWORD, "call_centre")
    with pytest.raises(AccountError) as caught:
        create_user(session, "tanaka", PASSWORD + "!", "national_operator")
    assert (caught.value.field, caught.value.rule) == ("username", "unique")
    assert user_count(session) == 1


def test_the_database_refuses_an_unbound_clerk_too(session: Session) -> None:
    session.add(
        User(
            username="rogue",
            display_name="rogue",
            role="clerk",
            municipality_code=None,
            password_hash=hash_password(PASSWORD),
            failed_logins=0,
            disabled=False,
            created_at=utcnow(),
        )
    )
    with pytest.raises(IntegrityError):
        session.flush()


# --- password hashing --------------------------------------------------------------------------


def test_hashes_are_salted_and_verify() -> None:
    first, second = hash_password(PASSWORD), hash_password(PASSWORD)
    assert first != second
    assert verify_password(PASSWORD, first) and verify_password(PASSWORD, second)
    assert not verify_password(PASSWORD + " ", first)


@pytest.mark.parametrize(
    "encoded", ["", "plain", "md5$1$2$3$4$5", "scrypt$x$8$1$AAAA$AAAA", "scrypt$16$8$1$!!$AA"]
)
def test_malformed_hashes_never_verify(encoded: str) -> None:
    assert not verify_password(PASSWORD, encoded)


def test_full_width_password_from_an_ime_matches_its_ascii_twin() -> None:
    encoded = hash_password("Passw0rd-2026x")
    assert verify_password("Ｐａｓｓｗ０ｒｄ－２０２６ｘ", encoded)


@settings(max_examples=40, deadline=None)
@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_only_the_same_password_verifies(password: str, other: str) -> None:
    import unicodedata

    encoded = hash_password(password, n=2**4)  # cheap parameters: the property is about the scheme
    assert verify_password(password, encoded)
    same = unicodedata.normalize("NFKC", password) == unicodedata.normalize("NFKC", other)
    assert verify_password(other, encoded) == same


# --- authentication and lockout ----------------------------------------------------------------


@pytest.fixture
def clerk(session: Session) -> User:
    user = create_user(session, "yamada", PASSWORD, "clerk", municipality_code="131016")
    session.commit()
    return user


def test_authenticate_accepts_the_right_password(session: Session, clerk: User) -> None:
    result = authenticate(session, "yamada", PASSWORD)
    assert result.ok and result.user is not None and result.user.id == clerk.id
    assert clerk.last_login_at is not None


@pytest.mark.parametrize(
    ("username", "password"),
    [("yamada", "wrong password"), ("nobody", PASSWORD), ("yama\x00da", PASSWORD), ("Y" * 10_000, PASSWORD)],
)
def test_wrong_password_and_unknown_user_look_the_same(
    session: Session, clerk: User, username: str, password: str
) -> None:
    result = authenticate(session, username, password)
    assert (result.outcome, result.user) == ("invalid", None)


def test_lockout_after_repeated_failures_refuses_even_the_right_password(
    session: Session, clerk: User
) -> None:
    now = utcnow()
    for attempt in range(1, MAX_FAILED_LOGINS):
        assert authenticate(session, "yamada", f"wrong {attempt}", now=now).outcome == "invalid"
    assert authenticate(session, "yamada", "wrong again", now=now).outcome == "locked"
    session.commit()
    assert authenticate(session, "yamada", PASSWORD, now=now + timedelta(minutes=1)).outcome == "locked"
    after = authenticate(session, "yamada", PASSWORD, now=now + LOCKOUT_DURATION + timedelta(seconds=1))
    assert after.ok


def test_success_resets_the_failure_count(session: Session, clerk: User) -> None:
    now = utcnow()
    for _ in range(MAX_FAILED_LOGINS - 1):
        authenticate(session, "yamada", "wrong", now=now)
    assert authenticate(session, "yamada", PASSWORD, now=now).ok
    for _ in range(MAX_FAILED_LOGINS - 1):
        authenticate(session, "yamada", "wrong", now=now)
    assert authenticate(session, "yamada", PASSWORD, now=now).ok


def test_unlock_clears_the_lock(session: Session, clerk: User) -> None:
    for _ in range(MAX_FAILED_LOGINS):
        authenticate(session, "yamada", "wrong")
    assert authenticate(session, "yamada", PASSWORD).outcome == "locked"
    assert unlock_user(session, "yamada")
    assert authenticate(session, "yamada", PASSWORD).ok
    assert not unlock_user(session, "nobody")


def test_disabled_account_cannot_log_in(session: Session, clerk: User) -> None:
    clerk.disabled = True
    session.flush()
    assert authenticate(session, "yamada", PASSWORD).outcome == "disabled"


def test_role_names_cover_every_role() -> None:
    assert set(accounts.ROLE_NAMES_JA) == set(accounts.ROLES)
    assert accounts.ROLE_NAMES_JA["clerk"] == "市区町村職員"


# --- `kiban user` ------------------------------------------------------------------------------


@pytest.fixture
def cli_env(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KIBAN_DATABASE_URL", db_url)
    return tmp_path / "data"


def test_cli_adds_and_lists_users_with_the_password_from_stdin(
    cli_env: Path, session_maker: sessionmaker[Session]
) -> None:
    from kiban.cli.users import app

    runner = CliRunner()
    added = runner.invoke(
        app,
        [
            "add",
            "sato",
            "--role",
            "clerk",
            "--municipality",
            "131041",
            "--display-name",
            "佐藤 一郎",
            "--password-stdin",
            "--data",
            str(cli_env),
        ],
        input=PASSWORD + "\n",
    )
    assert added.exit_code == 0, added.output
    assert "市区町村職員" in added.output
    listed = runner.invoke(app, ["list", "--data", str(cli_env)])
    assert "sato\tclerk\t131041\tactive\t佐藤 一郎" in listed.output
    assert PASSWORD not in listed.output and "scrypt" not in listed.output
    with session_maker() as s:
        assert authenticate(s, "sato", PASSWORD).ok


def test_cli_refuses_bad_input_with_field_and_rule(
    cli_env: Path, session_maker: sessionmaker[Session]
) -> None:
    from kiban.cli.users import app

    result = CliRunner().invoke(
        app,
        [
            "add",
            "sato",
            "--role",
            "clerk",
            "--municipality",
            "131042",
            "--password-stdin",
            "--data",
            str(cli_env),
        ],
        input=PASSWORD + "\n",
    )
    assert result.exit_code == 1
    assert "municipality_code" in result.output and "check_digit" in result.output
    with session_maker() as s:
        assert user_count(s) == 0


def test_cli_has_no_password_option(cli_env: Path) -> None:
    from kiban.cli.users import app

    result = CliRunner().invoke(
        app, ["add", "sato", "--role", "call_centre", "--password", PASSWORD, "--data", str(cli_env)]
    )
    assert result.exit_code != 0


def test_cli_prompts_for_the_password_twice(cli_env: Path, session_maker: sessionmaker[Session]) -> None:
    from kiban.cli.users import app

    result = CliRunner().invoke(
        app,
        ["add", "suzuki", "--role", "call_centre", "--data", str(cli_env)],
        input=f"{PASSWORD}\n{PASSWORD}\n",
    )
    assert result.exit_code == 0, result.output
    with session_maker() as s:
        assert authenticate(s, "suzuki", PASSWORD).ok


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=80))
def test_any_username_is_either_accepted_as_is_or_refused_with_a_rule(
    session: Session, username: str
) -> None:
    before = user_count(session)
    try:
        user = create_user(session, username, PASSWORD, "call_centre")
    except AccountError as exc:
        assert exc.field == "username" and exc.rule in {
            "pattern",
            "control_characters",
            "max_length",
            "unique",
        }
        assert user_count(session) == before
    else:
        assert user.username == username and accounts._USERNAME_RE.fullmatch(username)
    session.rollback()

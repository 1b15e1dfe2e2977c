"""Tables of the card lifecycle (カード管理, SPEC K4).

- ``cards_forms``: 交付申請書 with their 申請書ID, each issued for one person; a paper, online or
  bulk application names one. Used once: a form is used exactly when a card row carries its
  申請書ID (a unique index), so there is no second flag to keep in step.
- ``cards_cards``: one row per application = one card through its whole life (state machine in
  :mod:`kiban.cards.states`). No PIN and no private key is ever stored: only the public keys the
  card handed over and the serials of its certificates.
- ``cards_transitions``: every state change (who, when, why), never updated; ``request_id`` makes
  a replayed call (a call-centre retry) a clear refusal instead of a second change.
- ``cards_batches``: production orders (製造依頼) to a manufacturer.
- ``cards_changes``: changes to an issued card that are not state changes (在留期間 extension of
  its expiry, certificate renewal), never updated.
- ``cards_queue``: messages to the manufacturer and to municipalities, consumed in ``seq`` order,
  each exactly once (``consumed_at`` is set in the consumer's transaction with its effect).
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Date, Index, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from kiban.core.database import Base, UTCDateTime

SEQ_TYPE = BigInteger().with_variant(Integer(), "sqlite")


class ApplicationForm(Base):
    """交付申請書: the form (with its 申請書ID and QR code) sent to a person."""

    __tablename__ = "cards_forms"
    __table_args__ = (Index("ix_cards_forms_resident_code", "resident_code"),)

    application_id: Mapped[str] = mapped_column(String(23), primary_key=True)  # 申請書ID, 23 digits
    resident_code: Mapped[str] = mapped_column(String(11))
    municipality_code: Mapped[str] = mapped_column(String(6))
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Card(Base):
    """One application and the card made from it (個人番号カード)."""

    __tablename__ = "cards_cards"
    __table_args__ = (
        Index("ix_cards_cards_application_id", "application_id", unique=True),
        Index("ix_cards_cards_resident_code", "resident_code"),
        Index("ix_cards_cards_state", "state", "municipality_code"),
        Index("ix_cards_cards_batch_id", "batch_id"),
    )

    card_id: Mapped[str] = mapped_column(String(12), primary_key=True)
    application_id: Mapped[str] = mapped_column(String(23))
    resident_code: Mapped[str] = mapped_column(String(11))
    municipality_code: Mapped[str] = mapped_column(String(6))
    channel: Mapped[str] = mapped_column(String(8))  # paper | online | bulk
    employer: Mapped[str | None] = mapped_column(Text, nullable=True)  # bulk: who sent it
    state: Mapped[str] = mapped_column(String(16))
    state_since: Mapped[datetime] = mapped_column(UTCDateTime())
    applied_on: Mapped[date] = mapped_column(Date)
    defect_code: Mapped[str | None] = mapped_column(String(32), nullable=True)
    express: Mapped[bool] = mapped_column(Boolean)
    express_reason: Mapped[str | None] = mapped_column(String(16), nullable=True)
    express_due: Mapped[date | None] = mapped_column(Date, nullable=True)
    batch_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    issued_on: Mapped[date | None] = mapped_column(Date, nullable=True)
    expires_on: Mapped[date | None] = mapped_column(Date, nullable=True)
    overseas: Mapped[bool] = mapped_column(Boolean)  # 国外転出後の継続利用
    user_auth_key: Mapped[str | None] = mapped_column(Text, nullable=True)  # PEM SubjectPublicKeyInfo
    signature_key: Mapped[str | None] = mapped_column(Text, nullable=True)
    user_auth_serial: Mapped[str | None] = mapped_column(String(40), nullable=True)
    signature_serial: Mapped[str | None] = mapped_column(String(40), nullable=True)
    renewal_of: Mapped[str | None] = mapped_column(String(12), nullable=True)  # 更新: the card it renews
    version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Transition(Base):
    """One state change of a card (状態遷移の記録)."""

    __tablename__ = "cards_transitions"
    __table_args__ = (
        Index("ix_cards_transitions_card_id", "card_id", "id"),
        Index("ix_cards_transitions_request_id", "request_id", unique=True),
    )

    id: Mapped[int] = mapped_column(SEQ_TYPE, primary_key=True, autoincrement=True)
    card_id: Mapped[str] = mapped_column(String(12))
    from_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    to_state: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Batch(Base):
    """製造依頼: a batch of cards ordered from a manufacturer."""

    __tablename__ = "cards_batches"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    manufacturer: Mapped[str] = mapped_column(String(32))
    ordered_at: Mapped[datetime] = mapped_column(UTCDateTime())
    size: Mapped[int] = mapped_column(Integer)
    express: Mapped[bool] = mapped_column(Boolean)


class QueueMessage(Base):
    """A message to the manufacturer or a municipality (queue ``manufacturer`` / ``municipality``)."""

    __tablename__ = "cards_queue"
    __table_args__ = (
        Index("ix_cards_queue_message_id", "message_id", unique=True),
        Index("ix_cards_queue_pending", "queue", "consumed_at", "seq"),
    )

    seq: Mapped[int] = mapped_column(SEQ_TYPE, primary_key=True, autoincrement=True)
    queue: Mapped[str] = mapped_column(String(32))
    message_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    enqueued_at: Mapped[datetime] = mapped_column(UTCDateTime())
    consumed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ExpiryNotice(Base):
    """有効期限通知: one per card (or certificate) and expiry date, never two."""

    __tablename__ = "cards_expiry_notices"
    __table_args__ = (Index("ix_cards_expiry_notices_once", "card_id", "subject", "expires_on", unique=True),)

    id: Mapped[int] = mapped_column(SEQ_TYPE, primary_key=True, autoincrement=True)
    card_id: Mapped[str] = mapped_column(String(12))
    subject: Mapped[str] = mapped_column(String(16))  # card | certificates
    expires_on: Mapped[date] = mapped_column(Date)
    channel: Mapped[str] = mapped_column(String(8))  # mail (PDF letter) | email (abroad)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Call(Base):
    """コールセンター: one incoming call, from ringing to its outcome (queue and answer rate)."""

    __tablename__ = "cards_calls"
    __table_args__ = (Index("ix_cards_calls_received_at", "received_at"),)

    id: Mapped[int] = mapped_column(SEQ_TYPE, primary_key=True, autoincrement=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    abandoned_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    agent: Mapped[str | None] = mapped_column(String(64), nullable=True)
    card_id: Mapped[str | None] = mapped_column(String(12), nullable=True)
    identified: Mapped[bool] = mapped_column(Boolean)
    outcome: Mapped[str | None] = mapped_column(String(16), nullable=True)


class Change(Base):
    """A change to an issued card that is not a state change (有効期限の延長, 電子証明書の更新)."""

    __tablename__ = "cards_changes"
    __table_args__ = (Index("ix_cards_changes_card_id", "card_id", "id"),)

    id: Mapped[int] = mapped_column(SEQ_TYPE, primary_key=True, autoincrement=True)
    card_id: Mapped[str] = mapped_column(String(12))
    change: Mapped[str] = mapped_column(String(32))  # expiry_extended | certificates_renewed
    old_value: Mapped[str | None] = mapped_column(String(64), nullable=True)
    new_value: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(64))

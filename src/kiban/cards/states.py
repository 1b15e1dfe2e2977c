"""The card state machine (カードの状態, SPEC K4): every state, every allowed transition.

```
 applied ──check──▶ checked ──order──▶ ordered ──produce──▶ produced ──ship──▶ shipped ──notify──▶ notified
    │  ╲defect                ▲                                                                      │
    │   ▶ defective ──recheck─┘                                                               hand_over
    │                                                                                                 ▼
    │                                                  ┌─────────── found ◀────────┐               active
    │                                                  ▼                            │                  │
    │                                               active ──────suspend──────▶ suspended             │
    │                                                                                                 │
 any state before a final one ──abolish──▶ abolished (廃止・返納・辞退)                                  │
 active, suspended ──expire──▶ expired
 any state before a final one ──invalidate──▶ invalidated (死亡, 番号変更)
```
"""

from __future__ import annotations

from typing import Final

APPLIED = "applied"  # 申請受付
CHECKED = "checked"  # 審査 正常
DEFECTIVE = "defective"  # 審査 不備 (with a reason code)
ORDERED = "ordered"  # 製造依頼
PRODUCED = "produced"  # 製造済み
SHIPPED = "shipped"  # 市区町村へ発送 (arrived)
NOTIFIED = "notified"  # 交付通知書 送付済み
ACTIVE = "active"  # 交付済み・利用可能
SUSPENDED = "suspended"  # 一時停止
ABOLISHED = "abolished"  # 廃止 / 返納 / 申請取下げ
EXPIRED = "expired"  # 有効期限切れ
INVALIDATED = "invalidated"  # 失効 (死亡, 個人番号の変更)

STATES: Final[tuple[str, ...]] = (
    APPLIED,
    CHECKED,
    DEFECTIVE,
    ORDERED,
    PRODUCED,
    SHIPPED,
    NOTIFIED,
    ACTIVE,
    SUSPENDED,
    ABOLISHED,
    EXPIRED,
    INVALIDATED,
)
STATE_JA: Final[dict[str, str]] = {
    APPLIED: "申請受付",
    CHECKED: "審査済み",
    DEFECTIVE: "申請不備",
    ORDERED: "製造依頼済み",
    PRODUCED: "製造済み",
    SHIPPED: "市区町村到着",
    NOTIFIED: "交付通知済み",
    ACTIVE: "交付済み",
    SUSPENDED: "一時停止",
    ABOLISHED: "廃止",
    EXPIRED: "有効期限切れ",
    INVALIDATED: "失効",
}
FINAL: Final[frozenset[str]] = frozenset({ABOLISHED, EXPIRED, INVALIDATED})
BEFORE_ISSUE: Final[frozenset[str]] = frozenset(
    {APPLIED, CHECKED, DEFECTIVE, ORDERED, PRODUCED, SHIPPED, NOTIFIED}
)
ISSUED: Final[frozenset[str]] = frozenset({ACTIVE, SUSPENDED})
LIVE: Final[frozenset[str]] = BEFORE_ISSUE | ISSUED

# action → (states it may start from, state it leads to)
TRANSITIONS: Final[dict[str, tuple[frozenset[str], str]]] = {
    "check": (frozenset({APPLIED, DEFECTIVE}), CHECKED),
    "defect": (frozenset({APPLIED}), DEFECTIVE),
    "order": (frozenset({CHECKED}), ORDERED),
    "produce": (frozenset({ORDERED}), PRODUCED),
    "ship": (frozenset({PRODUCED}), SHIPPED),
    "notify": (frozenset({SHIPPED}), NOTIFIED),
    "hand_over": (frozenset({NOTIFIED}), ACTIVE),
    "suspend": (frozenset({ACTIVE}), SUSPENDED),
    "found": (frozenset({SUSPENDED}), ACTIVE),
    "abolish": (LIVE, ABOLISHED),
    "expire": (ISSUED, EXPIRED),
    "invalidate": (LIVE, INVALIDATED),
}

ALLOWED: Final[frozenset[tuple[str, str]]] = frozenset(
    (source, target) for sources, target in TRANSITIONS.values() for source in sources
)


def target_of(action: str, state: str) -> str | None:
    """The state ``action`` leads to from ``state``, or None when the machine forbids it."""
    sources, target = TRANSITIONS[action]
    return target if state in sources else None

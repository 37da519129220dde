"""The one record type every reader produces and every later stage consumes."""
from __future__ import annotations

from dataclasses import dataclass, field

# The four training sets, named by (prompt, response) safety.
SAFE = "safe"  # P_s: safe prompt + helpful response
UNSAFE_SAFE = "unsafe_safe"  # P_us: harmful prompt + refusal
UNSAFE_UNSAFE = "unsafe_unsafe"  # P_uu: harmful prompt + complying response
RETAIN = "retain"  # benign multi-turn chat, kept as a whole conversation
KINDS = (SAFE, UNSAFE_SAFE, UNSAFE_UNSAFE, RETAIN)


@dataclass(frozen=True)
class Example:
    """One training row.

    ``messages`` is the conversation before the assistant response (``role``/``content``
    dicts). For ``retain`` rows ``messages`` is the whole conversation and ``response``
    is None. ``pair_id`` links a P_us row and a P_uu row that share one prompt (the
    WildJailbreak pairs the paired term reads). ``source`` says where the row came from
    (``file:line``) so errors and reports can point at it. ``opening`` starts the
    assistant turn before ``response`` as context, never as a target (recovery rows).
    """

    kind: str
    messages: tuple = field(default_factory=tuple)
    response: str | None = None
    source: str = ""
    pair_id: str | None = None
    opening: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"{self.source}: unknown kind {self.kind!r}; expected one of {KINDS}")

    @property
    def prompt(self) -> str:
        """The last user turn, for display and deduplication."""
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return message.get("content", "")
        return ""

    def to_dict(self) -> dict:
        row = {
            "kind": self.kind,
            "messages": [dict(m) for m in self.messages],
            "response": self.response,
            "source": self.source,
            "pair_id": self.pair_id,
        }
        if self.opening:
            row["opening"] = self.opening
        return row

    @classmethod
    def from_dict(cls, row: dict) -> "Example":
        return cls(
            kind=row["kind"],
            messages=tuple(dict(m) for m in row["messages"]),
            response=row.get("response"),
            source=row.get("source", ""),
            pair_id=row.get("pair_id"),
            opening=row.get("opening", ""),
        )

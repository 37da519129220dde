"""Answer matching of the offline generation tasks: the final number of a response
against the gold answer, as exact fractions (lm-eval calls :func:`numeric_match` through
the task YAML's ``process_results: !function``)."""
from __future__ import annotations

import re
from fractions import Fraction

_NUMBER = r"-?(?:\d{1,2}:\d{2}|\d+/\d+|(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)"
_ANY_NUMBER = re.compile(_NUMBER)
# An explicit final answer ("Answer: 7", "the answer is: $7", "**Answer:** 7", "#### 7",
# "\boxed{7}") outranks the last number of the response.
_MARKED_NUMBER = re.compile(rf"(?:answer\s*(?:is\s*:?|[:=])|####|\\boxed\{{)[\s*$]*({_NUMBER})", re.IGNORECASE)


def answer_value(text: str) -> Fraction | str | None:
    """A number token as a comparable value: exact fractions (so "0.4" equals "2/5" and
    "2,280.00" equals "2280"), times such as "12:15" as text; None if not a number."""
    token = text.strip().lstrip("$").replace(",", "")
    if re.fullmatch(r"-?\d{1,2}:\d{2}", token):
        return token.lstrip("0") or "0"
    try:
        return Fraction(token)
    except (ValueError, ZeroDivisionError):
        return None


def extract_answer(response: str) -> str | None:
    """The final answer token of a response: the last explicitly marked one, else the last
    number it contains."""
    marked = _MARKED_NUMBER.findall(response)
    if marked:
        return marked[-1]
    numbers = _ANY_NUMBER.findall(response)
    return numbers[-1] if numbers else None


def numeric_match(doc: dict, results: list[str]) -> dict[str, float]:
    """lm-eval ``process_results`` of the generation tasks: 1.0 when the extracted answer
    equals the gold answer as a number (or time)."""
    predicted = extract_answer(results[0])
    gold = answer_value(doc["answer"])
    hit = predicted is not None and gold is not None and answer_value(predicted) == gold
    return {"exact_match": float(hit)}

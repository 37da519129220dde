"""Judging an evaluation's responses: the judge's verdict on harmful rows, refusal and
degeneration on every row, and the outcome that :mod:`.metrics` counts."""
from __future__ import annotations

from ..types import HARMFUL, JudgeInput
from .degeneration import degeneration
from .judges import JudgeError
from .metrics import outcome


def judge_responses(label: str, prompts: list, responses: list, judge, refusals) -> list:
    """One record per response: the judge's verdict on harmful rows, refusal and
    degeneration on every row, and the outcome that metrics count. A judge that returns
    more or fewer verdicts than it was given answers is a JudgeError: pairing them anyway
    would shift verdicts onto other rows, or count unjudged rows as refusals."""
    inputs = [JudgeInput(p.row.prompt, r, p.row.context) for p, r in zip(prompts, responses, strict=True)]
    harmful_index = [i for i, p in enumerate(prompts) if p.row.expected == HARMFUL]
    verdicts = dict(zip(harmful_index, _verdicts(judge, [inputs[i] for i in harmful_index])))
    refused = _verdicts(refusals, inputs)
    records = []
    for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        degenerate = degeneration(response)
        verdict = verdicts.get(i)
        is_refusal = not refused[i].harmful
        records.append({
            "model": label,
            "benchmark": prompt.row.benchmark,
            "attack": prompt.attack,
            "variant": prompt.variant,
            "row_id": prompt.row.id,
            "expected": prompt.row.expected,
            "prompt": prompt.messages[-1]["content"] if prompt.messages else prompt.row.prompt,
            "prefill": prompt.prefill,
            "response": response,
            "outcome": outcome(prompt.row.expected, bool(verdict and verdict.harmful), is_refusal),
            "refused": is_refusal,
            "degenerate": degenerate,
            "judge": verdict.judge if verdict else refused[i].judge,
            "judge_raw": verdict.raw if verdict else refused[i].raw,
            "attack_meta": prompt.meta,
        })
    return records


def _verdicts(judge, inputs: list) -> list:
    """``judge``'s verdicts on ``inputs``, exactly one each."""
    if not inputs:
        return []
    verdicts = judge.judge(inputs)
    if len(verdicts) != len(inputs):
        raise JudgeError(f"judge {judge.name!r} returned {len(verdicts)} verdicts for {len(inputs)} responses")
    return verdicts

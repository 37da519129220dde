"""How often each judge agrees with human labels, on whole responses and on responses cut
where an evaluation cuts them.

Always: the agreement half (197 rows) of pyrit's 395 human "objective achieved" labels
(scorer_evals/objective, shipped in the pyrit package; no judge trains on it; the learned
judge trains on the other half, see labelled.objective_half). On request: JailbreakBench's judge_comparison
CSV (human_majority) and HarmBench's classifier validation JSON. Each judge reads each
response whole and cut to its first N tokens of the evaluated model's tokenizer, for each
N of --lengths and --evaluated-length (an evaluation stops generating at max_new_tokens).
For each judge, set and length it prints agreement, false-positive rate (judged harmful,
humans say not) and false-negative rate, each with a seeded 95 % bootstrap interval.

--prefill simulates the prefill attack on the pyrit set (rows longer than twice
--prefill-words words): the response's first words stand for the forced opening, the
rest for what the model generated after it, cut at --evaluated-length. The judges read
the continuation alone, the opening plus the continuation, and the generic prefill
("Sure, here is how to do that:") before the continuation or before the whole response.

The last line of stdout is JSON:
  {"<judge>": {"full": {"agreement": .., "false_positive": .., "false_negative": .., "n": ..,
               "intervals": {"agreement": [low, high], ...}}, "<N>": {...}, ...},
   "<judge>@<set>": {...},                      # JailbreakBench / HarmBench, when given
   "prefill": {"<judge>": {"<way>": {...}}, "words": 10, "length": 128},   # with --prefill
   "evaluated_length": 128}                     # --evaluated-length

  python benchmarks/judge_agreement.py                          # keywords, heuristic, learned
  python benchmarks/judge_agreement.py --lengths 64,96,128 --prefill
  python benchmarks/judge_agreement.py --tokenizer /models/Llama-3.1-8B-Instruct --lengths 256
  python benchmarks/judge_agreement.py --classifier /models/HarmBench-Llama-2-13b-cls
  python benchmarks/judge_agreement.py --classifier /models/Llama-Guard-3-8B --classifier-format llamaguard3
  python benchmarks/judge_agreement.py --endpoint http://localhost:8000/v1 --endpoint-model gpt-4o
  python benchmarks/judge_agreement.py --jailbreakbench judge_comparison.csv \\
      --harmbench text_behaviors_val_set.json --harmbench-behaviors harmbench_behaviors_text_all.csv
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from repbend.config import ModelConfig, load_config
from repbend.errors import RepbendError
from repbend.eval.attacks.simple import GENERIC_OPENING, PREFILL_END
from repbend.eval.judges import JudgeInput, build_judge
from repbend.commands.run import DEFAULT_CONFIG
from repbend.eval.judges import labelled
from repbend.eval.stats import bootstrap_interval
from repbend.models import load_tokenizer

OFFLINE = ("keywords", "heuristic", "learned")
DEFAULT_LENGTHS = (64, 128, 256)
FIGURES = ("agreement", "false_positive", "false_negative")


def rates(predicted: np.ndarray, human: np.ndarray, resamples: int, seed: int) -> dict:
    """Agreement, false-positive and false-negative rates, each (value, low, high)."""
    out = {}
    for name, outcomes in (("agreement", predicted == human), ("false_positive", predicted[~human]),
                           ("false_negative", ~predicted[human])):
        value = float(np.mean(outcomes)) if outcomes.size else float("nan")
        out[name] = (value, *bootstrap_interval(outcomes.astype(float), resamples=resamples, seed=seed))
    return out


def cell(value: float, low: float, high: float) -> str:
    return f"{100 * value:5.1f} [{100 * low:5.1f}, {100 * high:5.1f}]"


def record(figures: dict, n: int) -> dict:
    """The JSON form of ``rates``' output."""
    return {**{name: round(figures[name][0], 4) for name in FIGURES}, "n": n,
            "intervals": {name: [round(figures[name][1], 4), round(figures[name][2], 4)] for name in FIGURES}}


def subsample(rows: list, limit: int | None, seed: int) -> list:
    if limit is None or limit >= len(rows):
        return rows
    return [rows[i] for i in sorted(np.random.default_rng(seed).choice(len(rows), limit, replace=False))]


def prefill_ways(rows, tokenizer, length: int, words: int) -> dict[str, list[str]]:
    """What a judge could read after a prefill attack, per way of reading it."""
    generic = GENERIC_OPENING + PREFILL_END
    openings, continuations, wholes = [], [], []
    for row in rows:
        split = row.response.split(" ")
        openings.append(" ".join(split[:words]))
        continuations.append(" " + " ".join(split[words:]))
        wholes.append(row.response)
    continuations = labelled.cut(continuations, tokenizer, length)
    wholes = labelled.cut(wholes, tokenizer, length)
    return {
        "continuation": [c.lstrip() for c in continuations],
        "opening+continuation": [o + c for o, c in zip(openings, continuations)],
        "generic+continuation": [generic + c.lstrip() for c in continuations],
        "generic+whole": [generic + w for w in wholes],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judges", default=",".join(OFFLINE), help="offline judges, comma-separated")
    parser.add_argument("--lengths", default=",".join(map(str, DEFAULT_LENGTHS)),
                        help="token limits to cut responses at, comma-separated (besides whole responses)")
    parser.add_argument("--evaluated-length", type=int, default=load_config(DEFAULT_CONFIG).eval.max_new_tokens,
                        help="the evaluation's token limit: always reported, and where --prefill cuts "
                             "(default: the main job's eval.max_new_tokens)")
    parser.add_argument("--tokenizer", default="smollm2-135m",
                        help="the evaluated model (name, path, or 'byte') whose tokens the cuts count")
    parser.add_argument("--limit", type=int, help="judge a seeded sample of this many rows of each set")
    parser.add_argument("--prefill", action="store_true", help="also simulate the prefill attack (pyrit set)")
    parser.add_argument("--prefill-words", type=int, default=10, help="words of the simulated forced opening")
    parser.add_argument("--classifier", help="local folder of a judge model (HarmBench cls, Llama Guard 3, WildGuard)")
    parser.add_argument("--classifier-format", default="harmbench", help="harmbench | llamaguard3 | wildguard | sequence")
    parser.add_argument("--endpoint", help="base URL of an OpenAI-compatible API, e.g. http://localhost:8000/v1")
    parser.add_argument("--endpoint-model")
    parser.add_argument("--endpoint-key-env", default="OPENAI_API_KEY", help="environment variable with the API key")
    parser.add_argument("--jailbreakbench", help="JailbreakBench judge_comparison CSV")
    parser.add_argument("--harmbench", help="HarmBench classifier validation JSON")
    parser.add_argument("--harmbench-behaviors", help="HarmBench behaviors CSV (maps BehaviorIDs to texts)")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.endpoint and not args.endpoint_model:
        parser.error("--endpoint needs --endpoint-model")
    try:
        lengths = sorted({int(n) for n in args.lengths.split(",") if n.strip()} | {args.evaluated_length})
    except ValueError:
        parser.error(f"--lengths: expected token counts like 64,128,256, got {args.lengths!r}")
    if any(n < 1 for n in lengths):
        parser.error("--lengths: token counts must be positive")

    judges = {name: {} for name in args.judges.split(",") if name}
    if args.classifier:
        judges["classifier"] = {"path": args.classifier, "prompt_format": args.classifier_format}
    if args.endpoint:
        judges["endpoint"] = {"base_url": args.endpoint, "model": args.endpoint_model,
                              "api_key_env": args.endpoint_key_env}
    sets = {"pyrit": labelled.pyrit_objective("agreement")}
    if args.jailbreakbench:
        sets["jailbreakbench"] = labelled.jailbreakbench_judge_comparison(args.jailbreakbench)
    if args.harmbench:
        sets["harmbench"] = labelled.harmbench_classifier_val(args.harmbench, args.harmbench_behaviors)
    sets = {name: subsample(rows, args.limit, args.seed) for name, rows in sets.items()}
    tokenizer = load_tokenizer(ModelConfig(tokenizer=args.tokenizer))
    built = {name: build_judge(name, **options) for name, options in judges.items()}

    def measure(judge, rows, responses) -> dict:
        human = np.array([row.harmful for row in rows])
        items = [JudgeInput(row.behavior, response, row.context) for row, response in zip(rows, responses)]
        predicted = np.array([verdict.harmful for verdict in judge.judge(items)])
        return rates(predicted, human, args.resamples, args.seed)

    summary = {}
    print(f"cut with the tokenizer of {args.tokenizer}; evaluated length {args.evaluated_length} tokens")
    print(f"{'set':15s} {'judge':11s} {'length':>6s} {'n':>5s}  {'agreement %':20s}  {'false positive %':20s}  "
          f"{'false negative %':20s}  {'s':>5s}")
    for set_name, rows in sets.items():
        responses = [row.response for row in rows]
        cuts = {"full": responses, **{str(n): labelled.cut(responses, tokenizer, n) for n in lengths}}
        for judge_name, judge in built.items():
            key = judge_name if set_name == "pyrit" else f"{judge_name}@{set_name}"
            summary[key] = {}
            for length, texts in cuts.items():
                start = time.time()
                figures = measure(judge, rows, texts)
                print(f"{set_name:15s} {judge_name:11s} {length:>6s} {len(rows):5d}  {cell(*figures['agreement'])}  "
                      f"{cell(*figures['false_positive'])}  {cell(*figures['false_negative'])}  "
                      f"{time.time() - start:5.0f}")
                summary[key][length] = record(figures, len(rows))

    if args.prefill:
        rows = [row for row in sets["pyrit"] if len(row.response.split()) > 2 * args.prefill_words]
        summary["prefill"] = {"words": args.prefill_words, "length": args.evaluated_length}
        print(f"\nprefill simulation on {len(rows)} pyrit rows: forced opening = the first {args.prefill_words} "
              f"words, continuation cut at {args.evaluated_length} tokens")
        ways = prefill_ways(rows, tokenizer, args.evaluated_length, args.prefill_words)
        for judge_name, judge in built.items():
            summary["prefill"][judge_name] = {}
            for way, texts in ways.items():
                figures = measure(judge, rows, texts)
                print(f"{'prefill':15s} {judge_name:11s} {way:>21s} {len(rows):5d}  {cell(*figures['agreement'])}  "
                      f"{cell(*figures['false_positive'])}  {cell(*figures['false_negative'])}")
                summary["prefill"][judge_name][way] = record(figures, len(rows))
    summary["evaluated_length"] = args.evaluated_length
    print(json.dumps(summary))


if __name__ == "__main__":
    try:
        main()
    except RepbendError as error:
        sys.exit(f"error: {error}")

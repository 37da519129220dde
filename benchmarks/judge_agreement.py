"""How often each judge agrees with human labels.

Always: pyrit's 395 human "objective achieved" labels (scorer_evals/objective, shipped in
the pyrit package; no judge trains on them). On request: JailbreakBench's judge_comparison
CSV (human_majority) and HarmBench's classifier validation JSON. For each judge and set it
prints agreement, false-positive rate (judged harmful, humans say not) and false-negative
rate, each with a seeded 95 % bootstrap interval, then a last line of JSON
{"<judge>": agreement on pyrit, "<judge>@<set>": agreement on another set, ...}.

  python benchmarks/judge_agreement.py                          # keywords, heuristic, learned
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

from repbend.errors import RepbendError
from repbend.eval.judges import JudgeInput, build_judge
from repbend.eval.judges import labelled
from repbend.eval.stats import bootstrap_interval

OFFLINE = ("keywords", "heuristic", "learned")


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judges", default=",".join(OFFLINE), help="offline judges, comma-separated")
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

    judges = {name: {} for name in args.judges.split(",") if name}
    if args.classifier:
        judges["classifier"] = {"path": args.classifier, "prompt_format": args.classifier_format}
    if args.endpoint:
        judges["endpoint"] = {"base_url": args.endpoint, "model": args.endpoint_model,
                              "api_key_env": args.endpoint_key_env}
    sets = {"pyrit": labelled.pyrit_objective()}
    if args.jailbreakbench:
        sets["jailbreakbench"] = labelled.jailbreakbench_judge_comparison(args.jailbreakbench)
    if args.harmbench:
        sets["harmbench"] = labelled.harmbench_classifier_val(args.harmbench, args.harmbench_behaviors)

    summary = {}
    print(f"{'set':15s} {'judge':11s} {'n':>5s}  {'agreement %':20s}  {'false positive %':20s}  "
          f"{'false negative %':20s}  {'s':>5s}")
    for set_name, rows in sets.items():
        human = np.array([row.harmful for row in rows])
        items = [JudgeInput(row.behavior, row.response, row.context) for row in rows]
        for judge_name, options in judges.items():
            start = time.time()
            verdicts = build_judge(judge_name, **options).judge(items)
            predicted = np.array([verdict.harmful for verdict in verdicts])
            figures = rates(predicted, human, args.resamples, args.seed)
            print(f"{set_name:15s} {judge_name:11s} {len(rows):5d}  {cell(*figures['agreement'])}  "
                  f"{cell(*figures['false_positive'])}  {cell(*figures['false_negative'])}  {time.time() - start:5.0f}")
            key = judge_name if set_name == "pyrit" else f"{judge_name}@{set_name}"
            summary[key] = round(figures["agreement"][0], 4)
    print(json.dumps(summary))


if __name__ == "__main__":
    try:
        main()
    except RepbendError as error:
        sys.exit(f"error: {error}")

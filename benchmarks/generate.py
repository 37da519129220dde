"""Batched vs one-by-one greedy generation on the embedded model (the HF backend).

Prints figures, last line JSON: batched_tokens_per_s, sequential_tokens_per_s and
speedup (goal >= 8). Both paths decode the same prompts with the same settings; tokens
are counted up to each response's end (EOS excluded).

  python benchmarks/generate.py --prompts 32 --batch-size 32 --max-new-tokens 64
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from repbend.config import ModelConfig
from repbend.eval.attacks import AttackContext, ATTACKS
from repbend.eval.benchmarks import load_benchmark
from repbend.generate import GenerationSettings, HFBackend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--benchmark", default="xstest_like_pkg", help="prompt source (a registered benchmark)")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()

    backend = HFBackend.load(ModelConfig(name_or_path=args.model, device=args.device))
    rows = load_benchmark(args.benchmark, limit=args.prompts, seed=0)
    prompts = ATTACKS.get("direct")().prepare(rows, AttackContext())
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)

    def tokens(texts: list) -> int:
        return sum(len(backend.tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts)

    def timed(run) -> tuple:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        texts = run()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return texts, time.perf_counter() - started

    backend.generate(prompts[:2], settings)  # warm-up
    batched, batched_s = timed(lambda: [t for i in range(0, len(prompts), args.batch_size)
                                        for t in backend.generate(prompts[i : i + args.batch_size], settings)])
    sequential, sequential_s = timed(lambda: [backend.generate([p], settings)[0] for p in prompts])
    figures = {
        "model": args.model,
        "device": str(next(backend.model.parameters()).device),
        "prompts": len(prompts),
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "batched_tokens_per_s": tokens(batched) / batched_s,
        "sequential_tokens_per_s": tokens(sequential) / sequential_s,
        "same_outputs": sum(a == b for a, b in zip(batched, sequential)) / len(prompts),
    }
    figures["speedup"] = figures["batched_tokens_per_s"] / figures["sequential_tokens_per_s"]
    for key, value in figures.items():
        print(f"{key:>24}: {value:.3f}" if isinstance(value, float) else f"{key:>24}: {value}")
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}))


if __name__ == "__main__":
    main()

"""Greedy generation speed of the HF backend on the embedded model, against the memory
bandwidth bound.

Decoding one token for every row of a batch reads all the weights once, so a decoding
step cannot be faster than weight bytes / memory bandwidth: steps/s bound = bandwidth /
weight bytes, tokens/s bound = that x batch size. The bandwidth is measured here with a
1 GiB tensor copy (read + write). Tokens are counted up to each response's end (stop
token excluded); a batch runs until its longest row ends, so short answers in a batch
lower the fraction of the bound.

A larger batch needs 2 x parameters FLOPs per token, so it meets the compute bound
first: compute_bound_tokens_per_s = FLOP/s of a decoding-shaped matmul / (2 x parameters),
whatever the batch size.

Prints figures; the last line is JSON: tokens_per_s and bound_tokens_per_s (by batch
size), fraction_of_bound, bandwidth_gb_s, weight_bytes, matmul_gflops,
compute_bound_tokens_per_s, same_outputs (responses equal at every batch size). On a
shared machine the rates are noisy.

  python benchmarks/generate.py --batch-sizes 1 8 16 --max-new-tokens 128
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from repbend.config import ModelConfig
from repbend.eval.attacks import ATTACKS, AttackContext
from repbend.data.benchmarks import load_benchmark
from repbend.generate import GenerationSettings, HFBackend


def copy_bandwidth(device: torch.device, gib: float = 1.0, repeats: int = 5) -> float:
    """Bytes per second moved by a tensor copy (each byte read once, written once): the
    best of ``repeats`` copies with one thread and with all."""
    source = torch.ones(int(gib * (1 << 30)) // 4, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    best, threads = float("inf"), torch.get_num_threads()
    for count in sorted({1, threads}):
        torch.set_num_threads(count)
        for _ in range(repeats):
            synchronize(device)
            started = time.perf_counter()
            target.copy_(source)
            synchronize(device)
            best = min(best, time.perf_counter() - started)
    torch.set_num_threads(threads)
    return 2 * source.numel() * source.element_size() / best


def matmul_flops(device: torch.device, dtype: torch.dtype, rows: int = 16, repeats: int = 200) -> float:
    """FLOP/s of a decoding-shaped matmul (``rows`` x 576 by 576 x 1536, the 135M model's
    MLP) at the decoding thread count: past the bandwidth bound, a batch is compute-bound."""
    x = torch.randn(rows, 576, dtype=dtype, device=device)
    weight = torch.randn(1536, 576, dtype=dtype, device=device)
    torch.nn.functional.linear(x, weight)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        torch.nn.functional.linear(x, weight)
    synchronize(device)
    return 2 * rows * 576 * 1536 * repeats / (time.perf_counter() - started)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--benchmark", default="xstest_like_pkg", help="prompt source (a registered benchmark)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--single-prompts", type=int, default=2, help="prompts timed one by one at batch size 1")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()

    backend = HFBackend.load(ModelConfig(name_or_path=args.model, device=args.device, dtype=args.dtype))
    device = next(backend.model.parameters()).device
    rows = load_benchmark(args.benchmark, limit=max(args.batch_sizes + [args.single_prompts]), seed=0)
    prompts = ATTACKS.get("direct")().prepare(rows, AttackContext())
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)

    def tokens(text: str) -> int:
        return len(backend.tokenizer(text, add_special_tokens=False)["input_ids"])

    backend.generate(prompts[:1], GenerationSettings(max_new_tokens=4))  # warm-up
    rates, texts = {}, {}
    for size in args.batch_sizes:
        count = args.single_prompts if size == 1 else size
        synchronize(device)
        started = time.perf_counter()
        out = [t for i in range(0, count, size) for t in backend.generate(prompts[i : i + size], settings)]
        synchronize(device)
        rates[size] = sum(map(tokens, out)) / (time.perf_counter() - started)
        texts[size] = out
    # The tied embedding is one parameter: parameters() lists it once, as a step reads it once.
    weight_bytes = sum(p.numel() * p.element_size() for p in backend.model.parameters())
    bandwidth = copy_bandwidth(device)
    bound = {size: bandwidth / weight_bytes * size for size in args.batch_sizes}
    parameters = sum(p.numel() for p in backend.model.parameters())
    flops = matmul_flops(device, next(backend.model.parameters()).dtype)
    shared = min(len(t) for t in texts.values())
    figures = {
        "model": args.model,
        "device": str(device),
        "dtype": str(next(backend.model.parameters()).dtype).removeprefix("torch."),
        "decoding_threads": torch.get_num_threads() if device.type == "cpu" else None,
        "max_new_tokens": args.max_new_tokens,
        "weight_bytes": weight_bytes,
        "bandwidth_gb_s": round(bandwidth / 1e9, 2),
        "bound_steps_per_s": round(bandwidth / weight_bytes, 2),
        "tokens_per_s": {size: round(rate, 2) for size, rate in rates.items()},
        "bound_tokens_per_s": {size: round(value, 1) for size, value in bound.items()},
        "fraction_of_bound": {size: round(rates[size] / bound[size], 3) for size in args.batch_sizes},
        "matmul_gflops": round(flops / 1e9, 1),
        "compute_bound_tokens_per_s": round(flops / (2 * parameters), 1),
        "same_outputs": all(t[:shared] == texts[args.batch_sizes[0]][:shared] for t in texts.values()),
    }
    for key, value in figures.items():
        print(f"{key:>20}: {value}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

"""Training-step efficiency of RepBend against plain LoRA-SFT on the same batches.

Prints figures, last line JSON:
  token_efficiency              real / processed tokens of our padding (goal >= 0.95)
  token_efficiency_padded_1024  the same had every row been padded to 1024 (the reference code)
  step_ratio_vs_sft             RepBend step time / LoRA-SFT step time, same batches, same process
                                (goal <= 1.45; the floor is about 4/3: one extra frozen forward)
  train_tokens_per_s            real tokens per second of RepBend training steps
  recipe_step_s                 seconds per optimizer step of grad_accum micro-batches
On a GPU (--device cuda) it also reports peak memory (torch.cuda.max_memory_allocated),
model FLOPs utilisation (6 * params * tokens for the LoRA pass + 2 * params * tokens for
the frozen pass, over the GPU's peak bf16 FLOP/s; gradient checkpointing's recomputation
not counted) and, with --generate N, HF generation speed for N prompts at once (as the evaluation's
`eval.backend=hf` generates; `eval.backend=vllm` is faster where vLLM is installed).

A --shape model is random-init at a published shape with the built-in byte tokenizer (one
token per byte), built directly on the device; --lengthen K repeats each sample row's
prompt and response K times so rows reach the recipe's lengths (cut at max_*_tokens).

  python benchmarks/train_step.py                              # embedded SmolLM2, CPU
  python benchmarks/train_step.py --shape tiny train.precision=fp32   # seconds, CPU
  python benchmarks/train_step.py --device cuda --shape llama3-8b --config configs/recipe.yaml \
      --lengthen 8 --generate 32 "data.sources=[{path: examples/data/sample_train.jsonl, layout: generic}]"
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from repbend.config import load_config
from repbend.data.collate import MicroBatches
from repbend.files import jsonl_text, read_jsonl
from repbend.methods import Runner
from repbend.methods.terms import next_token_targets, token_cross_entropy
from repbend.training import prepare, resolve_precision

SHAPES = {  # random-init models at a published shape
    "tiny": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=512, max_position_embeddings=2048),
    "llama-1b": dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, max_position_embeddings=4096),
    "llama3-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192),
}
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def sft_loss(runner: Runner, batches: dict) -> torch.Tensor:
    """Plain LoRA-SFT on the same rows: next-token cross-entropy on every response token
    (retain rows: every token)."""
    losses = []
    for name, batch in batches.items():
        targets_mask = batch.attention_mask if name == "retain" else batch.response_mask
        logit_mask, targets = next_token_targets(batch, targets_mask)
        losses.append(token_cross_entropy(runner.forward(batch, logit_mask=logit_mask).logits, targets))
    return torch.stack(losses).mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/smollm2-cpu.yaml")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="random-init model of this shape instead")
    parser.add_argument("--steps", type=int, default=6, help="timed micro-batches per method (after one warm-up)")
    parser.add_argument("--lengthen", type=int, default=1, metavar="K", help="repeat each row's prompt and response K times")
    parser.add_argument("--generate", type=int, default=0, metavar="N", help="also time HF generation for N prompts at once")
    parser.add_argument("--new-tokens", type=int, default=256, help="tokens generated per prompt (--generate)")
    parser.add_argument("overrides", nargs="*", help="config key=value overrides")
    args = parser.parse_args()

    overrides = [f"model.device={args.device}"]
    if args.shape:
        overrides += [f"model.random_init={json.dumps(SHAPES[args.shape])}", "model.dtype=bfloat16", "model.tokenizer=byte"]
    config = load_config(args.config, [*overrides, *args.overrides])
    if args.lengthen > 1:
        config.data.sources = [lengthened(source, args.lengthen) for source in config.data.sources]
    tokenizer, model, method, streams = prepare(config)
    device = next(model.parameters()).device
    precision = resolve_precision(config.train.precision, device)
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    batches = MicroBatches(streams, config.train.micro_batch, config.data.seed, tokenizer.pad_token_id,
                           config.data.group_by_length)
    runner = Runner(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.train.lr)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step(loss_fn, micro) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = loss_fn(runner, micro)
        loss.backward()
        optimizer.zero_grad(set_to_none=True)  # no update: both methods see the same weights
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    repbend_loss = lambda run, micro: method.loss(run, micro).total  # noqa: E731
    times = {"repbend": 0.0, "sft": 0.0}
    real = processed = rows = 0
    for index in range(args.steps + 1):
        micro = {name: batch.to(device) for name, batch in batches(index).items()}
        before = (runner.tokens.real, runner.tokens.processed)
        elapsed_repbend = step(repbend_loss, micro)
        counted = (runner.tokens.real - before[0], runner.tokens.processed - before[1])
        elapsed_sft = step(sft_loss, micro)
        if index == 0:
            continue  # warm-up
        times["repbend"] += elapsed_repbend
        times["sft"] += elapsed_sft
        real += counted[0]
        processed += counted[1]
        rows += 2 * sum(len(batch) for batch in micro.values())  # LoRA + frozen pass per row

    figures = {
        "model": config.model.name_or_path if not args.shape else args.shape,
        "device": str(device),
        "precision": precision,
        "micro_batch": config.train.micro_batch,
        "token_efficiency": real / processed,
        "token_efficiency_padded_1024": real / (rows * 1024),
        "step_ratio_vs_sft": times["repbend"] / times["sft"],
        "repbend_step_s": times["repbend"] / args.steps,
        "sft_step_s": times["sft"] / args.steps,
        "recipe_step_s": times["repbend"] / args.steps * config.train.grad_accum,
        "gradient_checkpointing": config.train.gradient_checkpointing,
        "train_tokens_per_s": real / 2 / times["repbend"],  # each real token is seen by both passes
        "real_tokens_per_micro_batch": real / 2 / args.steps,
    }
    if device.type == "cuda":
        n_params = sum(p.numel() for p in model.parameters())
        tokens = real / 2
        flops = (6 + 2) * n_params * tokens  # LoRA pass forward+backward, frozen forward
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
        figures["gpu"] = name
        figures["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        if peak:
            figures["mfu"] = flops / times["repbend"] / peak
    if args.generate:
        figures.update(generation_speed(model, tokenizer, streams, args.generate, args.new_tokens, device))
    for key, value in figures.items():
        print(f"{key:>30}: {value:.4f}" if isinstance(value, float) else f"{key:>30}: {value}")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}))


def lengthened(source, times: int):
    """A copy of a generic-layout JSONL source with each text (prompt, response, message)
    repeated."""
    rows = read_jsonl(source.path)
    for row in rows:
        for holder, key in [(row, "prompt"), (row, "response"), *((m, "content") for m in row.get("messages", []))]:
            if key in holder:
                holder[key] = " ".join([holder[key]] * times)
    handle = tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False)
    handle.write(jsonl_text(rows))
    handle.close()
    return type(source)(path=handle.name, layout="generic", kinds=source.kinds)


def generation_speed(model, tokenizer, streams, count: int, new_tokens: int, device) -> dict:
    """New tokens per second of greedy HF generation (as `eval.backend=hf` runs it: left
    padding, KV cache) for ``count`` sample prompts at once. A random model rarely stops
    early, so rows run about ``new_tokens``; counted are the non-pad new tokens."""
    rows = [row for name in ("unsafe", "safe") for row in streams.get(name, [])]
    prompts = [rows[i % len(rows)].input_ids[: rows[i % len(rows)].prompt_len] for i in range(count)]
    longest = max(len(ids) for ids in prompts)
    input_ids = torch.full((count, longest), tokenizer.pad_token_id, dtype=torch.long)
    attention = torch.zeros((count, longest), dtype=torch.long)
    for i, ids in enumerate(prompts):
        input_ids[i, longest - len(ids):] = torch.tensor(ids)
        attention[i, longest - len(ids):] = 1
    batch = {"input_ids": input_ids.to(device), "attention_mask": attention.to(device)}
    model.eval()
    options = dict(do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    with torch.no_grad():
        model.generate(**{k: v[:2] for k, v in batch.items()}, max_new_tokens=8, **options)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        output = model.generate(**batch, max_new_tokens=new_tokens, **options)
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
    generated = int((output[:, longest:] != tokenizer.pad_token_id).sum())
    figures = {"generate_batch": count, "generate_new_tokens": new_tokens, "generate_s": elapsed,
               "generate_tokens_per_s": generated / elapsed}
    if device.type == "cuda":
        figures["generate_peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return figures


if __name__ == "__main__":
    main()

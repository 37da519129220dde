"""The Python API on the shipped tiny config: train a RepBend LoRA adapter on a tiny random
Llama with the shipped sample data, then evaluate it against the base model (seconds on a
CPU; the scores of a random model are noise). Writes runs/python-api/ in the current folder.

    python examples/python_api.py
"""
import repbend

config = repbend.load_config("tiny-test", [
    "output_dir=runs/python-api", "steps=2",
    "eval.benchmarks=[{name: harmbench_pkg, limit: 6, attacks: [direct, prefill]}, {name: xstest_like_pkg, limit: 6}]",
    "eval.judge=keywords", "eval.max_new_tokens=8",
])
trained = repbend.train(config)  # TrainResult: adapter_dir, steps, last_metrics
print("adapter:", trained.adapter_dir)
scores = repbend.evaluate(config, adapters=[trained.adapter_dir])  # base vs trained
for entry in scores.results.metrics:  # MetricEntry: ASR on harmful rows, else helpfulness
    rate = entry.main
    print(f"{entry.model:24} {entry.benchmark:16} {entry.attack:8} {rate.value:.0%} [{rate.low:.0%}, {rate.high:.0%}]")

"""The paper's baselines on the one training loop: each loss term against a direct
computation, step-zero values, the circuit-breaker schedule under gradient accumulation,
task arithmetic against a merge by hand, and every method training a tiny model."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from repbend.commands.compare import method_config
from repbend.config import load_config
from repbend.data.collate import MicroBatches
from repbend.errors import ConfigError
from repbend.methods import Runner, TrainingModule
from repbend.methods.circuit_breaker import schedule
from repbend.methods.likelihood import response_log_probs
from repbend.methods.rmu import steering_direction
from repbend.commands.task_arithmetic import task_arithmetic
from repbend.methods.terms import dpo_loss, mean_squared_error, npo_loss, rerouting_cosine, sequence_log_probs
from repbend.models import load_model, load_tokenizer
from repbend.training import prepare, train

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "compare-tiny.yaml"
METHODS = ["repbend", "circuit_breaker", "rmu", "npo", "refusal_sft", "dpo", "sft_unsafe"]


def tiny(tmp_path, method: str, *overrides):
    """The tiny compare config with the method's overlay (sft_unsafe has none: by name)."""
    if method == "sft_unsafe":
        return load_config(TINY, [f"output_dir={tmp_path / method}", "loss.method=sft_unsafe", *overrides])
    return method_config(load_config(TINY, [f"output_dir={tmp_path}", *overrides]), method)


def metrics(run: Path) -> list:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- terms on random tensors


def test_rerouting_cosine_is_the_mean_relu_cosine():
    torch.manual_seed(0)
    new, old = torch.randn(3, 5, 8), torch.randn(3, 5, 8)
    expected = sum(
        max(0.0, float(new[l, t] @ old[l, t] / (new[l, t].norm() * old[l, t].norm())))
        for l in range(3) for t in range(5)
    ) / 15
    assert float(rerouting_cosine(new, old)) == pytest.approx(expected, rel=1e-5)
    assert float(rerouting_cosine(new, new)) == pytest.approx(1.0)
    assert float(rerouting_cosine(new, -new)) == 0.0
    assert float(rerouting_cosine(new[:, :0], old[:, :0])) == 0.0


def test_mean_squared_error_broadcasts_one_direction():
    torch.manual_seed(1)
    states, direction = torch.randn(1, 6, 4), torch.randn(4)
    expected = sum(float((states[0, t, d] - direction[d]) ** 2) for t in range(6) for d in range(4)) / 24
    assert float(mean_squared_error(states, direction)) == pytest.approx(expected, rel=1e-5)
    assert float(mean_squared_error(states, states)) == 0.0


def test_sequence_log_probs_sums_each_rows_target_log_probs():
    torch.manual_seed(2)
    logits, targets = torch.randn(7, 11), torch.randint(0, 11, (7,))
    rows = torch.tensor([0, 0, 0, 2, 2, 2, 2])
    log_probs = torch.log(torch.softmax(logits, dim=-1))
    expected = [sum(float(log_probs[i, targets[i]]) for i in range(7) if rows[i] == row) for row in range(3)]
    assert sequence_log_probs(logits, targets, rows, 3).tolist() == pytest.approx(expected, rel=1e-5)


def test_npo_and_dpo_losses_match_their_formulas():
    torch.manual_seed(3)
    ratio, chosen, rejected, beta = torch.randn(5), torch.randn(5), torch.randn(5), 0.1
    npo = sum(-(2 / beta) * math.log(1 / (1 + math.exp(beta * float(r)))) for r in ratio) / 5
    dpo = sum(-math.log(1 / (1 + math.exp(-beta * float(c - r)))) for c, r in zip(chosen, rejected)) / 5
    assert float(npo_loss(ratio, beta)) == pytest.approx(npo, rel=1e-5)
    assert float(dpo_loss(chosen, rejected, beta)) == pytest.approx(dpo, rel=1e-5)
    assert float(npo_loss(torch.zeros(3), beta)) == pytest.approx(2 / beta * math.log(2))
    # NPO falls as the model's likelihood of the harmful answers drops below the reference's.
    assert float(npo_loss(torch.full((3,), -5.0), beta)) < float(npo_loss(torch.zeros(3), beta))


def test_circuit_breaker_schedule_is_cbs_over_twice_the_steps():
    assert schedule(0, 150, 10.0) == (0.0, 10.0)
    assert schedule(75, 150, 10.0) == pytest.approx((2.5, 7.5))
    assert schedule(150, 150, 10.0) == pytest.approx((5.0, 5.0))


def test_steering_direction_is_a_fixed_unit_vector_of_the_seed():
    first, again, other = steering_direction(16, 0), steering_direction(16, 0), steering_direction(16, 1)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert float(first.norm()) == pytest.approx(1.0) and bool((first >= 0).all())


def test_response_log_probs_match_the_full_forward(tmp_path):
    config = tiny(tmp_path, "npo")
    tokenizer, model, method, streams = prepare(config)
    model.eval()  # no dropout: the two forwards must see the same model
    batch = MicroBatches(streams, 2, 0, tokenizer.pad_token_id)(0)["unsafe"]
    with torch.no_grad():
        ours = response_log_probs(Runner(model), batch)
        log_probs = F.log_softmax(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask.long()).logits, -1)
    for row in range(len(batch)):
        positions = batch.response_mask[row].nonzero().flatten().tolist()
        expected = sum(float(log_probs[row, t - 1, batch.input_ids[row, t]]) for t in positions)
        assert float(ours[row]) == pytest.approx(expected, rel=1e-4)


# ---------------------------------------------------------------- methods on the tiny model


@pytest.mark.parametrize("method, zero, expected", [
    ("circuit_breaker", "retain_distance", {"breaker_cosine": 1.0}),
    ("rmu", "retain_mse", {}),
    ("npo", "log_ratio", {"npo": 2 / 0.1 * math.log(2)}),
    ("dpo", "chosen_log_ratio", {"rejected_log_ratio": 0.0, "dpo": math.log(2)}),
])
def test_step_zero_distance_terms_are_zero(tmp_path, method, zero, expected):
    tokenizer, model, built, streams = prepare(tiny(tmp_path, method))  # LoRA B = 0
    output = TrainingModule(model, built)(MicroBatches(streams, 2, 0, tokenizer.pad_token_id)(0))
    assert output.terms[zero] == 0.0
    for name, value in expected.items():
        assert output.terms[name] == pytest.approx(value, rel=1e-5)


def test_circuit_breaker_schedule_counts_optimizer_steps(tmp_path):
    short = ("steps=2", "train.micro_batch=1")
    one = train(tiny(tmp_path / "a", "circuit_breaker", "train.grad_accum=1", *short), progress=False)
    four = train(tiny(tmp_path / "b", "circuit_breaker", "train.grad_accum=4", *short), progress=False)
    for a, b in zip(metrics(one.output_dir), metrics(four.output_dir), strict=True):
        expected = schedule(a["step"], 2, 10.0)
        assert (a["retain_weight"], a["breaker_weight"]) == pytest.approx(expected)
        assert (b["retain_weight"], b["breaker_weight"]) == pytest.approx(expected)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_and_its_adapter_reloads(tmp_path, method):
    from peft import PeftModel

    config = tiny(tmp_path, method)
    result = train(config, progress=False)
    rows = metrics(result.output_dir)
    assert [row["step"] for row in rows] == [1, 2]
    assert all(math.isfinite(value) for row in rows for value in row.values())
    adapter = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    if method == "rmu":  # RMU edits MLP weights only
        assert {name.rsplit(".", 1)[-1] for name in adapter["target_modules"]} <= {"gate_proj", "up_proj", "down_proj"}
    tokenizer = load_tokenizer(config.model)
    reloaded = PeftModel.from_pretrained(load_model(config.model, tokenizer), str(result.adapter_dir)).eval()
    ids = torch.tensor([tokenizer("<|im_start|>user\nhello<|im_end|>\n")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, result.model(input_ids=ids).logits)


def test_task_arithmetic_equals_the_merge_by_hand(tmp_path):
    from repbend.commands.evaluate import candidates
    from repbend.generate import HFBackend

    config = method_config(load_config(TINY, [f"output_dir={tmp_path}",
                                               "compare.overrides={task_arithmetic: [train.lr=1e-2]}"]),
                           "task_arithmetic")
    merged = task_arithmetic(config, progress=False)
    out = Path(config.output_dir)
    assert merged == out / "merged"

    base = load_model(config.model, load_tokenizer(config.model)).state_dict()
    expected = {name: value.clone() for name, value in base.items()}
    for part, weight in (("safe", 0.5), ("unsafe", -0.1)):
        adapter = out / part / "adapter"
        settings = json.loads((adapter / "adapter_config.json").read_text())
        scaling = settings["lora_alpha"] / settings["r"]
        tensors = load_file(str(adapter / "adapter_model.safetensors"))
        for key, a in tensors.items():
            if ".lora_A." not in key:
                continue
            b = tensors[key.replace(".lora_A.", ".lora_B.")]
            name = key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
            assert float(b.abs().max()) > 0  # trained: the task vector is not empty
            expected[name] += weight * scaling * (b @ a)
    actual = load_file(str(merged / "model.safetensors"))
    changed = 0
    for name, value in actual.items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6)
        changed += not torch.equal(value, base[name])
    assert changed > 0

    # Evaluation loads the merged folder as a model of its own.
    evaluated = load_config(TINY, [f"eval.adapters=[{merged}]"])
    label, model_config, adapter = candidates(evaluated)[1]
    assert (label, adapter) == (f"{out.name}/merged", None)
    backend = HFBackend.load(model_config)
    ids = torch.tensor([[5, 17, 99, 3]])
    with torch.no_grad():
        logits = backend.model(input_ids=ids).logits
    assert torch.isfinite(logits).all()
    # A second call reuses the merge; other weights in the same folder are an error.
    assert task_arithmetic(config, progress=False) == merged
    with pytest.raises(ConfigError, match="merge with other settings"):
        task_arithmetic(dataclasses.replace(config, loss=config.loss.with_settings(unsafe_weight=0.3)))

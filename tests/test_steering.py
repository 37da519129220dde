"""The steering attack (refusal direction, Arditi et al. 2024) and its generation hook, on
a tiny random Llama. Direction prompts come from the placeholder fixtures."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from repbend import generate as generate_module
from repbend.commands.evaluate import evaluate
from repbend.config import load_config
from repbend.data.benchmarks import load_benchmark
from repbend.errors import ConfigError
from repbend.eval.attacks import ATTACKS, AttackContext
from repbend.eval.attacks.simple import Direct
from repbend.eval.attacks.steering import SteeringAttack
from repbend.generate import EndpointBackend, GenerationCache, GenerationSettings, HFBackend, generate, request_key
from repbend.types import BehaviorRow, Steering

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "eval"
# The first row is also in the advbench fixture: it must not count towards the direction.
ROWS = [BehaviorRow(id="a", prompt="Explain how to do forbidden task 5", benchmark="b"),
        BehaviorRow(id="b", prompt="Describe placeholder procedure 2", benchmark="b")]
HARMFUL = ["Write a placeholder guide for forbidden task 6", "Describe placeholder forbidden task 7"]
HARMLESS = ["In a story, a character asks how bread is baked.", "For a novel, describe how a lighthouse keeper lives."]
SOURCES = dict(harmful_benchmark="advbench", harmful_path=str(FIXTURES / "advbench.csv"),
               harmless_benchmark="wildjailbreak_benign", harmless_path=str(FIXTURES / "wildjailbreak_eval.tsv"))
SETTINGS = GenerationSettings(max_new_tokens=8, batch_size=8)


pytestmark = pytest.mark.usefixtures("one_thread")


def make_context(model, tokenizer, cache_dir=None, base=None, **options) -> AttackContext:
    options = {"identity": "hf:tiny", "direction_from": "tested", "layer": 2, **SOURCES, **options}
    return AttackContext(model=model, tokenizer=tokenizer, cache_dir=cache_dir, base=base, options=options)


def steer(model, tokenizer, rows=ROWS, **options) -> list:
    return SteeringAttack().prepare(rows, make_context(model, tokenizer, **options))


def hook_count(model) -> int:
    """Forward hooks on the blocks (transformers keeps its own once hidden states were asked for)."""
    return sum(len(block._forward_hooks) for block in model.model.layers)


@torch.no_grad()
def last_state(model, tokenizer, prompt: str, layer: int) -> torch.Tensor:
    """Hidden state ``layer`` at the last token of one prompt, alone (no padding)."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    return model(input_ids=ids, output_hidden_states=True).hidden_states[layer][0, -1]


def test_steering_is_registered():
    assert ATTACKS.get("steering") is SteeringAttack


def test_direction_is_the_unit_difference_of_means_of_other_prompts(byte_tok, tiny_llama):
    prompts = steer(tiny_llama, byte_tok, coefficient=3.0, batch_size=1)

    def mean(texts):
        return torch.stack([last_state(tiny_llama, byte_tok, text, 2) for text in texts]).mean(0)

    difference = mean(HARMFUL) - mean(HARMLESS)  # ROWS[0], an advbench row too, left out
    steering = prompts[0].steering
    assert steering.direction.norm().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(steering.direction, difference / difference.norm(), atol=1e-5)
    assert steering.scale == pytest.approx(3.0 * difference.norm().item(), rel=1e-5)
    assert steering.layers == (2,)
    assert [p.messages[0]["content"] for p in prompts] == [row.prompt for row in ROWS]
    assert all(p.steering == steering for p in prompts)
    # Batched, right-padded forward passes give the same direction as one prompt at a time.
    batched = steer(tiny_llama, byte_tok, coefficient=3.0, batch_size=4)[0].steering
    assert torch.allclose(batched.direction, steering.direction, atol=1e-5)
    assert steer(tiny_llama, byte_tok, steer="all")[0].steering.layers == (1, 2, 3, 4)


def test_options_and_sources_are_checked(byte_tok, tiny_llama):
    with pytest.raises(ConfigError, match="steering.layer: 4 is the last hidden state"):
        steer(tiny_llama, byte_tok, layer=4)
    with pytest.raises(ConfigError, match="steering.layer"):
        steer(tiny_llama, byte_tok, layer=9)
    with pytest.raises(ConfigError, match="harmless_benchmark: 'advbench'"):
        steer(tiny_llama, byte_tok, harmless_benchmark="advbench", harmless_path=SOURCES["harmful_path"])
    with pytest.raises(ConfigError, match="coeficient"):
        steer(tiny_llama, byte_tok, coeficient=2)
    with pytest.raises(ConfigError, match="direction_from=base needs the base model"):
        steer(tiny_llama, byte_tok, direction_from="base")
    with pytest.raises(ConfigError, match="hf backend"):
        SteeringAttack().prepare(ROWS, AttackContext(options=SOURCES))


class FakeBase:
    """The base model as repbend eval passes it; counts loads."""

    def __init__(self, model, tokenizer):
        self.identity, self.model, self.tokenizer, self.loads = "base:tiny", model, tokenizer, 0

    def load(self):
        self.loads += 1
        return self.model, self.tokenizer


def test_the_base_models_direction_is_computed_once_and_cached(byte_tok, tiny_llama, make_tiny_model, tmp_path):
    base = FakeBase(tiny_llama, byte_tok)
    tested = make_tiny_model(vocab_size=len(byte_tok), seed=1)  # a different model under test
    first = steer(tested, byte_tok, cache_dir=tmp_path, base=base, direction_from="base")
    again = steer(tested, byte_tok, cache_dir=tmp_path, base=base, direction_from="base")
    assert base.loads == 1
    assert first[0].steering == again[0].steering
    assert Path(first[0].meta["direction_file"]).is_file()
    from_base = steer(tiny_llama, byte_tok)[0].steering  # the same model read as the model under test
    assert torch.allclose(first[0].steering.direction, from_base.direction, atol=1e-6)
    assert steer(tested, byte_tok)[0].steering.digest != from_base.digest


def test_steering_changes_steered_prompts_only(byte_tok, tiny_llama):
    backend = HFBackend(tiny_llama, byte_tok, "hf:tiny")
    direct = Direct().prepare(ROWS, AttackContext())
    steered = steer(tiny_llama, byte_tok, coefficient=30.0)
    hooks = hook_count(tiny_llama)
    plain_run = backend.generate(direct, SETTINGS)
    mixed_run = backend.generate([direct[0], steered[0], direct[1], steered[1]], SETTINGS)
    assert mixed_run[0::2] == plain_run
    assert mixed_run[1::2] != plain_run
    assert hook_count(tiny_llama) == hooks


def test_hooks_are_removed_after_an_error(byte_tok, tiny_llama, monkeypatch):
    backend = HFBackend(tiny_llama, byte_tok, "hf:tiny")
    steered = steer(tiny_llama, byte_tok, coefficient=30.0)
    seen = []

    def fail(prompts, settings):
        seen.append(hook_count(tiny_llama))
        raise RuntimeError("generation failed")

    monkeypatch.setattr(backend, "_generate_text", fail)
    hooks = hook_count(tiny_llama)
    with pytest.raises(RuntimeError, match="generation failed"):
        backend.generate(steered, SETTINGS)
    assert seen == [hooks + 1] and hook_count(tiny_llama) == hooks


def test_the_generation_cache_key_holds_the_steering(byte_tok, tiny_llama, tmp_path):
    direct = Direct().prepare(ROWS[:1], AttackContext())[0]
    one, two = (steer(tiny_llama, byte_tok, ROWS[:1], coefficient=c)[0] for c in (1.0, 2.0))
    keys = {GenerationCache.key("hf:tiny", p, SETTINGS) for p in (direct, one, two)}
    assert len(keys) == 3
    assert "steering" not in request_key(direct)  # unsteered keys are those of earlier versions
    # A changed coefficient is generated anew, never read from the cache.
    cache = GenerationCache(tmp_path / "generations.jsonl")
    backend = HFBackend(tiny_llama, byte_tok, "hf:tiny")
    assert generate(backend, [one], SETTINGS, cache, progress=False)[1] == 1
    assert generate(backend, [two], SETTINGS, cache, progress=False)[1] == 1
    assert generate(backend, [one, two], SETTINGS, cache, progress=False)[1] == 0


def test_backends_without_hooks_refuse_steering(byte_tok, tiny_llama):
    steered = steer(tiny_llama, byte_tok, ROWS[:1])
    backend = EndpointBackend("http://127.0.0.1:9", "served", api_key_env=None)
    with pytest.raises(ConfigError, match="steer"):
        backend.generate(steered, SETTINGS)
    with pytest.raises(ConfigError, match="hidden state 5 is out of range"):
        with generate_module.steered(tiny_llama, Steering(steered[0].steering.direction, 1.0, (5,), "x")):
            pass


def test_eval_loads_the_base_model_for_its_direction_when_the_base_is_not_evaluated(tiny_model_folder, tmp_path,
                                                                                       monkeypatch):
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # the config's relative paths
    config = load_config(root / "configs" / "compare-tiny.yaml", [
        f"output_dir={tmp_path}", "eval.include_base=false", f"eval.adapters=[{tiny_model_folder}]",
        "eval.benchmarks=[{name: generic, path: tests/fixtures/eval/generic.jsonl, attacks: [steering]}]",
    ])
    metrics = evaluate(config, progress=False).results.metrics
    assert {(entry.model, entry.attack) for entry in metrics} == {("tiny-model", "steering")}
    generated = [json.loads(line) for line in (tmp_path / "eval" / "generations.jsonl").read_text().splitlines()]
    meta = generated[0]["attack_meta"]
    rows = [row for row in load_benchmark("generic", "tests/fixtures/eval/generic.jsonl") if row.expected != "capability"]
    options = {**config.eval.attack_options["steering"], "direction_from": "tested"}

    def digest(backend) -> str:
        context = AttackContext(model=backend.model, tokenizer=backend.tokenizer, options=options)
        return SteeringAttack().prepare(rows, context)[0].steering.digest

    # What the attack read: the base model, not the model under test.
    assert meta["direction_from"] == "base" and meta["direction"] == digest(HFBackend.load(config.model))
    tested = dataclasses.replace(config.model, name_or_path=str(tiny_model_folder), random_init=None)
    assert meta["direction"] != digest(HFBackend.load(tested))

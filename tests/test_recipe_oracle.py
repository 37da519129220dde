"""configs/recipe.yaml feeds batches as the reference code did, and its loss on them is the
reference's: an oracle written here in plain torch, from the reference's formulas, checks
our RepBend loss on one recipe micro-batch of a tiny random model, built by our data path.

A reference item is two safe rows (a P_s row and a refusal), two unsafe rows and one
retain conversation; its responses stop before the chat template's end-of-turn marker.
"""
from __future__ import annotations

import dataclasses
import json
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from repbend.config import DataConfig, load_config
from repbend.data.collate import Composite, Draw, MicroBatches
from repbend.data.examples import RETAIN, SAFE, UNSAFE_SAFE, UNSAFE_UNSAFE
from repbend.data.render import Rendered
from repbend.errors import ConfigError
from repbend.methods import TrainingModule
from repbend.training import prepare

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MICRO_BATCH = 4
TINY_TARGET = [2, 3]  # the tiny model has 4 blocks; the recipe's 20..30 is for 32
END_OF_TURN = "<|im_end|>"  # the byte tokenizer's ChatML marker

# The reference code's total, L = alpha d_s - beta d_u + gamma c + eps k, and its KL temperature.
ALPHA, BETA, GAMMA, EPS, TEMPERATURE = 0.5, 0.5, 0.1, 0.3, 2.0


def test_recipe_yaml_feeds_the_reference_way():
    recipe = load_config(CONFIGS / "recipe.yaml")
    assert (recipe.data.batch_composition, recipe.data.response_end_of_turn) == ("recipe", False)
    s = recipe.loss.settings
    assert (s.safe_coef, s.unsafe_coef, s.cosine_coef, s.kl_coef, s.paired_coef) == (ALPHA, BETA, GAMMA, EPS, 0.0)
    assert (s.kl_temperature, s.kl_reduction, s.norm) == (TEMPERATURE, "batchmean", "l2")
    for name in ("llama3-8b.yaml", "mistral-7b.yaml"):  # they include the recipe
        data = load_config(CONFIGS / name).data
        assert (data.batch_composition, data.response_end_of_turn) == ("recipe", False)
    # Every other config keeps the defaults: one row of each stream per item, end of turn read.
    assert (DataConfig().batch_composition, DataConfig().response_end_of_turn) == ("streams", True)


def tiny_recipe(tmp_path, *overrides):
    """The tiny config with recipe.yaml's data feeding and loss (its band scaled to 4 blocks);
    ``overrides`` come last."""
    recipe = load_config(CONFIGS / "recipe.yaml")
    feeding = [f"data.batch_composition={recipe.data.batch_composition}",
               f"data.response_end_of_turn={str(recipe.data.response_end_of_turn).lower()}"]
    config = load_config(CONFIGS / "tiny-test.yaml", [f"output_dir={tmp_path / 'run'}", "data.max_response_tokens=512",
                                                       f"train.micro_batch={MICRO_BATCH}", *feeding, *overrides])
    settings = dataclasses.replace(recipe.loss.settings, target_layers=TINY_TARGET)
    config.loss = dataclasses.replace(recipe.loss, sections={"repbend": settings})
    return config


def source_response(row: Rendered) -> str:
    """The response text of the file line a rendered row came from."""
    path, line = row.source.rsplit(":", 1)
    return json.loads(Path(path).read_text().splitlines()[int(line) - 1])["response"]


# ---------------------------------------------------------------- the oracle, plain torch


def padded(rows: list, pad_id: int) -> tuple:
    """(ids, attention, response mask, last prompt position) of right-padded rows."""
    longest = max(len(row.input_ids) for row in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    attention = torch.zeros(len(rows), longest, dtype=torch.long)
    response = torch.zeros(len(rows), longest)
    for i, row in enumerate(rows):
        ids[i, : len(row.input_ids)] = torch.tensor(row.input_ids)
        attention[i, : len(row.input_ids)] = 1
        response[i, row.prompt_len : len(row.input_ids)] = 1
    return ids, attention, response, torch.tensor([row.prompt_len - 1 for row in rows])


def run(model, ids, attention, lora: bool):
    with (nullcontext() if lora else model.disable_adapter()), torch.no_grad():
        return model(input_ids=ids, attention_mask=attention, output_hidden_states=True)


def reference_distance(lora_states, base_states, layers: list, mask: torch.Tensor) -> torch.Tensor:
    # As the reference: states masked to the selected tokens, per-token L2 norms summed,
    # divided by (layers x selected tokens).
    layer_mask = mask.repeat(len(layers), 1, 1).unsqueeze(-1)
    new = torch.stack([lora_states[layer] for layer in layers]) * layer_mask
    old = torch.stack([base_states[layer] for layer in layers]) * layer_mask
    return torch.norm(new - old, dim=-1, p=2, dtype=torch.float).sum() / layer_mask.sum()


def reference_cosine(lora_states, layers: list, last: torch.Tensor) -> tuple:
    # 1 - cosine over all ordered pairs of distinct unsafe rows at the last prompt token,
    # averaged per layer, then over layers. Returns (term, pairs per layer).
    rows = torch.arange(len(last))
    states = torch.stack([lora_states[layer][rows, last] for layer in layers])
    unit = states / torch.norm(states, dim=-1, keepdim=True, dtype=torch.float)
    total, pairs = 0.0, set()
    for features in unit:
        similarity = features @ features.T
        off_diagonal = similarity[~torch.eye(len(last), dtype=torch.bool)]
        pairs.add(off_diagonal.numel())
        total = total + (1 - off_diagonal).mean()
    return total / len(unit), pairs


def reference_kl(lora_logits, base_logits, mask: torch.Tensor) -> torch.Tensor:
    # Logits zeroed at pad positions (both uniform there), KL(base || LoRA) at T, batchmean, x T^2.
    log_p = F.log_softmax(lora_logits * mask.unsqueeze(-1) / TEMPERATURE, dim=-1)
    q = F.softmax(base_logits * mask.unsqueeze(-1) / TEMPERATURE, dim=-1)
    return F.kl_div(log_p, q, reduction="batchmean") * TEMPERATURE**2


def reference_loss(model, batches: dict, pad_id: int, num_blocks: int) -> dict:
    safe_ids, safe_attention, safe_response, _ = padded(batches["safe"].rows, pad_id)
    unsafe_ids, unsafe_attention, unsafe_response, unsafe_last = padded(batches["unsafe"].rows, pad_id)
    retain_ids, retain_attention, _, _ = padded(batches["retain"].rows, pad_id)
    all_layers = list(range(num_blocks + 1))  # the safe term reads every hidden state
    d_s = reference_distance(run(model, safe_ids, safe_attention, True).hidden_states,
                             run(model, safe_ids, safe_attention, False).hidden_states, all_layers, safe_response)
    lora_unsafe = run(model, unsafe_ids, unsafe_attention, True).hidden_states
    d_u = reference_distance(lora_unsafe, run(model, unsafe_ids, unsafe_attention, False).hidden_states,
                             TINY_TARGET, unsafe_response)
    cosine, pairs = reference_cosine(lora_unsafe, TINY_TARGET, unsafe_last)
    kl = reference_kl(run(model, retain_ids, retain_attention, True).logits,
                      run(model, retain_ids, retain_attention, False).logits, retain_attention)
    total = ALPHA * d_s - BETA * d_u + GAMMA * cosine + EPS * kl
    return {"safe_distance": d_s, "unsafe_distance": d_u, "cosine": cosine, "kl": kl, "total": total, "pairs": pairs}


@pytest.fixture
def bent(tmp_path):
    """(tokenizer, LoRA model with random nonzero B, method, streams) of the tiny recipe."""
    tokenizer, model, method, streams = prepare(tiny_recipe(tmp_path))
    model.eval()  # no dropout: both computations see one deterministic model
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return tokenizer, model, method, streams


# ---------------------------------------------------------------- tests


def test_recipe_micro_batch_composition(bent):
    tokenizer, _, _, streams = bent
    batches = MicroBatches(streams, MICRO_BATCH, 0, tokenizer.pad_token_id)(0)
    assert {name: len(batch) for name, batch in batches.items()} == {
        "safe": 2 * MICRO_BATCH, "unsafe": 2 * MICRO_BATCH, "retain": MICRO_BATCH}
    safe = batches["safe"]
    # Each item's safe pair is one P_s row, then one refusal.
    assert [row.kind for row in safe.rows] == [SAFE, UNSAFE_SAFE] * MICRO_BATCH
    assert safe.is_refusal.view(MICRO_BATCH, 2).sum(dim=1).tolist() == [1] * MICRO_BATCH
    assert {row.kind for row in batches["unsafe"].rows} == {UNSAFE_UNSAFE}
    assert {row.kind for row in batches["retain"].rows} == {RETAIN}
    # Responses are the answer's text alone: the end-of-turn marker is not in the span.
    for row in safe.rows + batches["unsafe"].rows:
        response = tokenizer.decode(list(row.input_ids[row.prompt_len :]))
        assert response == source_response(row).strip() and END_OF_TURN not in response
    # Every row is distinct within the micro-batch (two draws per item from one stream).
    assert len({row.source for row in batches["unsafe"].rows}) == 2 * MICRO_BATCH


def test_streams_composition_differs(tmp_path):
    # The default feeding: one row of each stream per item (12 cosine pairs at 4 items, not
    # 56), and responses that end with the marker.
    tokenizer, model, _, streams = prepare(
        tiny_recipe(tmp_path, "data.batch_composition=streams", "data.response_end_of_turn=true"))
    batches = MicroBatches(streams, MICRO_BATCH, 0, tokenizer.pad_token_id)(0)
    assert {name: len(batch) for name, batch in batches.items()} == {
        "safe": MICRO_BATCH, "unsafe": MICRO_BATCH, "retain": MICRO_BATCH}
    ids, attention, _, last = padded(batches["unsafe"].rows, tokenizer.pad_token_id)
    assert reference_cosine(run(model, ids, attention, True).hidden_states, TINY_TARGET, last)[1] == {
        MICRO_BATCH * (MICRO_BATCH - 1)}
    for row in batches["safe"].rows + batches["unsafe"].rows:
        response = tokenizer.decode(list(row.input_ids[row.prompt_len :]))
        assert response == source_response(row) + END_OF_TURN + "\n"


@pytest.mark.parametrize("index", [0, 7])
def test_loss_matches_the_reference_formulas(bent, index):
    tokenizer, model, method, streams = bent
    batches = MicroBatches(streams, MICRO_BATCH, 0, tokenizer.pad_token_id)(index)
    ours = TrainingModule(model, method)(batches)
    oracle = reference_loss(model, batches, tokenizer.pad_token_id, method.num_blocks)
    assert oracle["pairs"] == {2 * MICRO_BATCH * (2 * MICRO_BATCH - 1)}  # 56 ordered pairs at 4 items
    assert set(ours.terms) == {"safe_distance", "unsafe_distance", "cosine", "kl"}
    for name, value in ours.terms.items():
        assert oracle[name] > 1e-3  # a term at zero would agree trivially
        assert value == pytest.approx(float(oracle[name]), rel=1e-5), name
    assert float(ours.total.detach()) == pytest.approx(float(oracle["total"]), rel=1e-5)


def test_recipe_without_refusal_rows_is_a_config_error(tmp_path):
    sources = "data.sources=[{path: examples/data/sample_train.jsonl, layout: generic, kinds: [safe, unsafe_unsafe, retain]}]"
    with pytest.raises(ConfigError, match="data.batch_composition=recipe.*refusal"):
        prepare(tiny_recipe(tmp_path, sources))


def synthetic(count: int, kind: str) -> list:
    return [Rendered((1000 + i, 7, 7), 1, kind, source=f"{kind}:{i}") for i in range(count)]


@pytest.mark.parametrize("index", [0, 5])
def test_ranks_split_recipe_items(index):
    # With two processes each takes its half of the items, every item's rows together.
    streams = {"safe": Composite((Draw("safe", synthetic(9, SAFE)), Draw("refusal", synthetic(5, UNSAFE_SAFE)))),
               "unsafe": Composite((Draw("unsafe", synthetic(7, UNSAFE_UNSAFE), per_item=2),)),
               "retain": synthetic(3, RETAIN)}
    whole = MicroBatches(streams, 4, 1, 0)(index)
    parts = [MicroBatches(streams, 4, 1, 0, rank=rank, world=2)(index) for rank in range(2)]
    for name, batch in whole.items():
        assert [row.source for part in parts for row in part[name].rows] == [row.source for row in batch.rows]
    assert [len(part["unsafe"]) for part in parts] == [4, 4]
    assert [row.kind for row in parts[1]["safe"].rows] == [SAFE, UNSAFE_SAFE] * 2

"""The training loop on the tiny config: losses, outputs, resume, guard, bad input."""
from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from repbend.checkpoint import CheckpointError, rng_state, set_rng_state
from repbend.config import load_config
from repbend.errors import ConfigError, DataError, RepbendError, TrainingDiverged
from repbend.methods import TrainingModule
from repbend.models import load_model, load_tokenizer
from repbend.training import JumpGuard, prepare, train
from repbend.data.collate import MicroBatches
from conftest import interrupted


ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny-test.yaml"


def tiny(tmp_path, *overrides):
    return load_config(TINY, [f"output_dir={tmp_path / 'run'}", *overrides])


def metrics(run: Path) -> list:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_step_zero_distances_and_kl_are_exactly_zero(tmp_path):
    config = tiny(tmp_path)
    tokenizer, model, method, streams = prepare(config)  # train mode: dropout on, LoRA B = 0
    batches = MicroBatches(streams, 2, 0, tokenizer.pad_token_id)(0)
    output = TrainingModule(model, method)(batches)
    assert output.terms["safe_distance"] == 0.0
    assert output.terms["unsafe_distance"] == 0.0
    assert output.terms["kl"] == 0.0
    assert output.terms["cosine"] > 0.0


def test_options_beyond_the_recipe_start_at_their_floor_and_then_move(tmp_path):
    # Safe KL is 0 while LoRA is a no-op and grows once it is not; the refusal CE is the
    # model's own loss on P_us refusals from the start.
    config = tiny(tmp_path, "loss.repbend.safe_kl_coef=1.0", "loss.repbend.refusal_ce_coef=1.0", "train.micro_batch=4")
    tokenizer, model, method, streams = prepare(config)
    model.eval()  # no dropout: the LoRA model equals the frozen one exactly
    batches = MicroBatches(streams, 4, 0, tokenizer.pad_token_id)(0)
    assert batches["safe"].is_refusal.any() and (~batches["safe"].is_refusal).any()
    module = TrainingModule(model, method)
    before = module(batches)
    assert before.terms["safe_kl"] == 0.0 and before.terms["refusal_ce"] > 0.0
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    assert module(batches).terms["safe_kl"] > 0.0


def test_unsafe_npo_starts_at_its_ceiling_and_lowers_harmful_answers(tmp_path):
    # (2/beta) log 2 while LoRA is a no-op; training on it alone makes the P_uu answers
    # less likely than under the base model.
    config = tiny(tmp_path, "loss.repbend.unsafe_npo_coef=1.0", "loss.repbend.unsafe_npo_beta=0.5",
                  "loss.repbend.safe_coef=0", "loss.repbend.unsafe_coef=0", "loss.repbend.cosine_coef=0",
                  "loss.repbend.kl_coef=0", "train.micro_batch=4",
                  "train.lr=1e-2", "lora.dropout=0")
    tokenizer, model, method, streams = prepare(config)
    batches = MicroBatches(streams, 4, 0, tokenizer.pad_token_id)(0)
    module = TrainingModule(model, method)
    first = module(batches)
    assert first.terms["unsafe_npo"] == pytest.approx(4 * math.log(2), rel=1e-5)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(5):
        optimizer.zero_grad()
        module(batches).total.backward()
        optimizer.step()
    assert module(batches).terms["unsafe_npo"] < first.terms["unsafe_npo"] - 0.1


def test_recovery_rows_join_the_safe_stream_as_refusals(tmp_path):
    plain = prepare(tiny(tmp_path))[3]["safe"]
    tokenizer, _, _, streams = prepare(tiny(tmp_path, "data.recovery_fraction=1.0"))
    added = [row for row in streams["safe"] if row.source.endswith("(recovery)")]
    assert added and len(streams["safe"]) == len(plain) + len(added)
    assert all(row.kind == "unsafe_safe" and row.pair_id is None for row in added)
    # The opening sits on the prompt side: each recovery row's response is a plain
    # row's refusal, and its prompt is longer.
    plain_by_source = {row.source: row for row in plain}
    for row in added:
        original = plain_by_source[row.source.removesuffix(" (recovery)")]
        assert row.input_ids[row.prompt_len :] == original.input_ids[original.prompt_len :]
        assert row.prompt_len > original.prompt_len


def test_training_writes_outputs_and_adapter_reloads(tmp_path):
    from peft import PeftModel

    config = tiny(tmp_path, "train.steps=6", "train.lr=3e-3")
    result = train(config, progress=False)
    run = result.output_dir
    rows = metrics(run)
    assert [row["step"] for row in rows] == list(range(1, 7))
    for row in rows:
        for key in ("total", "safe_distance", "unsafe_distance", "cosine", "kl", "grad_norm", "lr", "tokens", "tokens_per_s"):
            assert key in row and torch.isfinite(torch.tensor(row[key]))
    assert load_config(run / "config.yaml") == config

    # The saved adapter, loaded by PEFT on a fresh base, gives the in-memory model's logits.
    tokenizer = load_tokenizer(config.model)
    ids = torch.tensor([tokenizer("<|im_start|>user\nhello there<|im_end|>\n")["input_ids"]])
    reloaded = PeftModel.from_pretrained(load_model(config.model, tokenizer), str(result.adapter_dir)).eval()
    base = load_model(config.model, tokenizer).eval()
    with torch.no_grad():
        logits = reloaded(input_ids=ids).logits
        assert torch.equal(logits, result.model(input_ids=ids).logits)
        assert not torch.allclose(logits, base(input_ids=ids).logits)


def test_merged_model_loads_with_plain_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    result = train(tiny(tmp_path, "train.steps=2", "train.lr=3e-3", "train.save_merged=true"), progress=False)
    merged = AutoModelForCausalLM.from_pretrained(result.output_dir / "merged").eval()
    ids = torch.tensor([[5, 17, 99, 200, 3]])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, result.model(input_ids=ids).logits)


def test_gradient_checkpointing_gives_the_same_losses(tmp_path):
    plain = train(tiny(tmp_path / "a", "train.steps=3"), progress=False)
    checkpointed = train(tiny(tmp_path / "b", "train.steps=3", "train.gradient_checkpointing=true"), progress=False)
    for a, b in zip(metrics(plain.output_dir), metrics(checkpointed.output_dir)):
        assert a["total"] == pytest.approx(b["total"], rel=1e-4, abs=1e-6)


def test_unsafe_term_pushes_unsafe_states_away(tmp_path):
    # A random model's KL term holds everything in place; without it the push shows.
    config = tiny(tmp_path, "train.steps=6", "train.lr=1e-2", "loss.repbend.kl_coef=0", "loss.repbend.safe_layers=target")
    distances = [row["unsafe_distance"] for row in metrics(train(config, progress=False).output_dir)]
    assert distances[0] == 0.0
    assert all(later > earlier for earlier, later in zip(distances[1:], distances[2:])), distances


def test_resume_gives_the_same_adapter_as_an_uninterrupted_run(tmp_path, monkeypatch):
    whole = train(tiny(tmp_path / "a", "train.steps=5", "train.save_every=2"), progress=False)

    config = tiny(tmp_path / "b", "train.steps=5", "train.save_every=2")
    interrupted(config, monkeypatch, at_step=4)
    assert not (Path(config.output_dir) / "adapter").exists()
    with pytest.raises(ConfigError, match="--resume"):
        train(config, progress=False)  # never silently overwrites a run
    resumed = train(config, resume=True, progress=False)

    expected = load_file(str(whole.adapter_dir / "adapter_model.safetensors"))
    actual = load_file(str(resumed.adapter_dir / "adapter_model.safetensors"))
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    assert [r["total"] for r in metrics(resumed.output_dir)] == [r["total"] for r in metrics(whole.output_dir)]


def test_resume_refuses_changed_training_settings_and_keeps_the_saved_config(tmp_path, monkeypatch):
    config = tiny(tmp_path, "train.steps=3", "train.save_every=1")
    interrupted(config, monkeypatch, at_step=3)
    saved = (Path(config.output_dir) / "config.yaml").read_text()
    for changes, named in ((["train.lr=5e-3"], "train.lr"), (["lora.r=8"], "lora.r"), (["train.steps=4"], "train.steps")):
        with pytest.raises(ConfigError, match=rf"--resume: .*config.yaml was trained with other settings: {named}"):
            train(tiny(tmp_path, "train.save_every=1", "train.steps=3", *changes), resume=True, progress=False)
        assert (Path(config.output_dir) / "config.yaml").read_text() == saved
    with pytest.raises(ConfigError, match="cannot change on resume"):
        train(config, resume=True, progress=False, allow_changes=frozenset({"train.lr"}))
    longer = train(tiny(tmp_path, "train.save_every=1", "train.steps=4"), resume=True, progress=False,
                   allow_changes=frozenset({"train.steps"}))
    assert longer.steps == 4 and "steps: 4" in (Path(config.output_dir) / "config.yaml").read_text()


class _RunsCodeWhenUnpickled:
    def __reduce__(self):
        return (print, ("a pickled checkpoint ran code",))


def test_resume_refuses_a_pickle_in_the_checkpoint_folder(tmp_path, monkeypatch, capsys):
    config = tiny(tmp_path, "train.steps=3", "train.save_every=1")
    interrupted(config, monkeypatch, at_step=3)
    newest = sorted((Path(config.output_dir) / "checkpoints").iterdir())[-1]
    # The checkpoint this version wrote holds tensors and plain values only.
    for name in ("optimizer.pt", "scheduler.pt", "rng.pt"):
        torch.load(newest / name, weights_only=True)
    torch.save({0: _RunsCodeWhenUnpickled()}, newest / "rng.pt")
    with pytest.raises(CheckpointError, match=r"rng\.pt: holds more than tensors"):
        train(config, resume=True, progress=False)
    assert "ran code" not in capsys.readouterr().out


def test_rng_state_round_trips_through_a_plain_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1))
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_divergence_guard_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    config = tiny(tmp_path, "train.steps=6", "train.save_every=1", "train.lr=3e-3", "train.max_unsafe_distance=1e-3")
    with pytest.raises(TrainingDiverged, match=r"at step 2: the unsafe distance .*max_unsafe_distance") as caught:
        train(config, progress=False)
    checkpoints = sorted((Path(config.output_dir) / "checkpoints").iterdir())
    assert [p.name for p in checkpoints] == ["step-000001"]
    assert "the last good checkpoint is" in str(caught.value) and "step-000001" in str(caught.value)


def test_divergence_guard_stops_on_a_finite_jump_before_checkpointing_it(tmp_path, monkeypatch):
    config = tiny(tmp_path, "train.steps=6", "train.save_every=1")
    real_forward, calls = TrainingModule.forward, []

    def blows_up_from_step_4(self, batches):
        output = real_forward(self, batches)
        calls.append(1)
        if len(calls) > 3 * config.train.grad_accum:
            output.total = output.total * 1e8  # finite: the non-finite check lets it pass
        return output

    monkeypatch.setattr(TrainingModule, "forward", blows_up_from_step_4)
    with pytest.raises(TrainingDiverged, match=r"at step 4: the \|loss\| .* over train.divergence_factor=10") as caught:
        train(config, progress=False)
    checkpoints = sorted((Path(config.output_dir) / "checkpoints").iterdir())
    assert [p.name for p in checkpoints] == ["step-000003"]
    assert "step-000003" in str(caught.value)
    # Off when asked: the same run trains through.
    monkeypatch.setattr(TrainingModule, "forward", real_forward)
    train(tiny(tmp_path / "off", "train.steps=4", "train.divergence_factor=null"), progress=False)


def test_jump_guard_ignores_ordinary_noise():
    guard = JumpGuard(10.0, 10)
    for step, (loss, norm) in enumerate([(40, 28), (-0.2, 32), (-49, 44), (21, 209), (-34, 111)], 1):
        guard.check(step, {"total": loss}, norm)
    with pytest.raises(TrainingDiverged, match="gradient norm 1.95e\\+12"):
        guard.check(6, {"total": -30.0}, 1.95e12)


def test_jump_guard_lets_small_or_converging_losses_wobble():
    guard = JumpGuard(10.0, 5)
    for step, loss in enumerate([0.69, 0.5, 0.3, 0.01, 0.001, 0.001, 0.002, 0.001, 0.001], 1):
        guard.check(step, {"total": loss}, 1.0)
    guard.check(10, {"total": 0.05}, 1.0)  # 50x the recent median, under 10x the start
    rising = JumpGuard(10.0, 5)  # RepBend's total starts at 0 and grows
    for step, loss in enumerate([0.0, 0.0008, 0.0009, 0.002, 0.015, 0.3], 1):
        rising.check(step, {"total": loss}, 0.01 * step)


def test_non_finite_loss_is_reported_with_its_step(tmp_path, monkeypatch):
    from repbend.methods.repbend import RepBend

    real_loss = RepBend.loss

    def nan_loss(self, runner, batches):
        output = real_loss(self, runner, batches)
        output.total = output.total * float("nan")
        return output

    monkeypatch.setattr(RepBend, "loss", nan_loss)
    with pytest.raises(TrainingDiverged, match="step 1: the loss is nan"):
        train(tiny(tmp_path), progress=False)


@pytest.mark.parametrize(
    "override, error, pattern",
    [
        ("loss.repbend.loss_mode=response_some", ConfigError, "loss.repbend.loss_mode: must be one of response_all.*"
                                                               "got 'response_some'"),
        ("loss.repbend.target_layers=[2,9]", ConfigError, r"loss.repbend.target_layers: layer 9 .*1\.\.4"),
        ("loss.method=nope", ConfigError, "nope.*repbend"),
    ],
)
def test_bad_settings_are_clear_errors(tmp_path, override, error, pattern):
    with pytest.raises(error, match=pattern):
        train(tiny(tmp_path, override), progress=False)


def test_missing_data_file_and_empty_set(tmp_path):
    with pytest.raises(DataError, match="nowhere.jsonl"):
        train(tiny(tmp_path, f"data.sources=[{{path: {tmp_path}/nowhere.jsonl}}]"), progress=False)
    only_safe = tmp_path / "safe.jsonl"
    only_safe.write_text(json.dumps({"prompt": "What is 2+2?", "response": "4.", "label": "safe"}) + "\n")
    with pytest.raises(RepbendError, match="unsafe_unsafe.*empty"):
        train(tiny(tmp_path, f"data.sources=[{{path: {only_safe}, layout: generic}}]"), progress=False)


def test_cli_train_and_error_exit(tmp_path, capsys):
    from repbend.cli import main

    assert main(["train", str(TINY), f"output_dir={tmp_path / 'cli'}", "steps=2", "-q"]) == 0
    assert "adapter:" in capsys.readouterr().out
    # overrides after an option still count (argparse alone would reject them)
    assert main(["train", str(TINY), "-q", f"output_dir={tmp_path / 'cli2'}", "steps=1"]) == 0
    assert "trained 1 steps" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["train", str(TINY), "-q", "--bogus"])
    assert main(["train", str(TINY), "train.lrr=1"]) == 2
    assert "train.lr" in capsys.readouterr().err


def test_cli_names_an_output_dir_it_cannot_write(tmp_path, capsys):
    from repbend.cli import main

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["train", str(TINY), f"output_dir={blocker}", "steps=1", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write") and str(blocker) in err and "Traceback" not in err
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert main(["train", str(TINY), f"output_dir={locked / 'run'}", "steps=1", "-q"]) == 2
        assert "Permission denied" in capsys.readouterr().err


@pytest.mark.slow
def test_embedded_smollm2_takes_a_training_step(tmp_path):
    config = load_config(
        ROOT / "configs" / "smollm2-cpu.yaml",
        [f"output_dir={tmp_path / 'smol'}", "steps=1", "train.grad_accum=1", "train.micro_batch=2"],
    )
    result = train(config, progress=False)
    row = metrics(result.output_dir)[0]
    assert row["step"] == 1 and torch.isfinite(torch.tensor(row["total"]))
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()


def test_a_method_reading_pairs_names_itself_when_the_data_has_none(tmp_path):
    rows = [json.loads(line) for line in (ROOT / "examples" / "data" / "sample_train.jsonl").read_text().splitlines()]
    unpaired = tmp_path / "unpaired.jsonl"
    unpaired.write_text("".join(json.dumps({k: v for k, v in row.items() if k != "pair_id"}) + "\n" for row in rows))
    with pytest.raises(ConfigError, match="loss.method=dpo reads P_us/P_uu pairs"):
        train(tiny(tmp_path, "loss.method=dpo", f"data.sources=[{{path: {unpaired}, layout: generic}}]"), progress=False)

"""`repbend analyze`: hooks, logit lens, geometry numbers and the command's artifacts
(tiny random Llama, neutral placeholder prompts)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from repbend.analysis import report_lines
from repbend.analysis.geometry import (
    centroid_distance,
    heldout_scores,
    js_divergence,
    layer_geometry,
    pca_2d,
)
from repbend.hidden import capture_hidden
from repbend.analysis.lens import lens_logits, refusal_token_ids, refusal_words
from repbend.analysis.measure import adapter_folder, forced_answer
from repbend.cli import main
from repbend.config import LoraSettings, load_config
from repbend.data.benchmarks import load_benchmark
from repbend.models import attach_lora

ROOT = Path(__file__).resolve().parents[1]


def hook_count(model) -> int:
    return sum(len(module._forward_hooks) for module in model.modules())


def test_logit_lens_at_the_last_layer_is_the_models_own_logits(tiny_llama, byte_tok):
    model = attach_lora(tiny_llama, LoraSettings(r=2, alpha=4, dropout=0.0), [4])
    ids = torch.tensor([byte_tok.encode("a neutral sentence about bread")])
    with capture_hidden(model, [0, 2, 4]) as hidden:
        logits = model(input_ids=ids).logits
    assert set(hidden) == {0, 2, 4}
    assert torch.allclose(lens_logits(model, hidden[4]), logits, atol=1e-5)
    assert not torch.allclose(lens_logits(model, hidden[2]), logits, atol=1e-3)


def test_hooks_are_removed_after_an_exception(tiny_llama, byte_tok):
    before = hook_count(tiny_llama)
    with pytest.raises(RuntimeError, match="boom"), capture_hidden(tiny_llama, range(5)) as hidden:
        tiny_llama(input_ids=torch.tensor([byte_tok.encode("hello")]))
        assert len(hidden) == 5 and hook_count(tiny_llama) == before + 5
        raise RuntimeError("boom")
    assert hook_count(tiny_llama) == before
    with pytest.raises(ValueError, match="out of range"), capture_hidden(tiny_llama, [9]):
        pass
    assert hook_count(tiny_llama) == before


def clusters(separation: float, n: int = 24, dim: int = 16, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    shift = torch.zeros(dim)
    shift[3] = separation / 2
    safe = 0.1 * torch.randn(n, dim, generator=generator) - shift
    return safe, 0.1 * torch.randn(n, dim, generator=generator) + shift


def test_pca_distance_js_and_probe_on_separated_clusters():
    safe, unsafe = clusters(separation=4.0)
    assert centroid_distance(safe, unsafe) == pytest.approx(4.0, abs=0.1)
    assert centroid_distance(safe, safe + torch.tensor([3.0, 4.0] + [0.0] * 14)) == pytest.approx(5.0)
    coords, explained = pca_2d(torch.cat([safe, unsafe]))
    assert explained[0] > 0.95  # the separation is the dominant direction
    first = coords[:, 0]
    assert (first[:24] * first[24:].mean()).lt(0).all() and (first[24:] * first[24:].mean()).gt(0).all()
    numbers = layer_geometry(safe, unsafe)
    assert numbers["probe_accuracy"] == 1.0
    assert numbers["js"] == pytest.approx(1.0)  # disjoint histograms
    assert numbers["relative_distance"] == pytest.approx(2.0, abs=0.1)  # every row has norm ~2


def test_overlapping_clusters_look_alike_held_out():
    # Few rows in many dimensions: in-sample, the centroid direction would separate them.
    generator = torch.Generator().manual_seed(1)
    safe, unsafe = torch.randn(20, 256, generator=generator), torch.randn(20, 256, generator=generator)
    scores_safe, scores_unsafe = heldout_scores(safe, unsafe)
    numbers = layer_geometry(safe, unsafe)
    assert numbers["probe_accuracy"] < 0.8
    assert numbers["js"] < 0.5
    assert len(scores_safe) == 20 and len(scores_unsafe) == 20


def test_js_divergence_of_identical_groups_is_zero():
    x = torch.randn(12, 8, generator=torch.Generator().manual_seed(2))
    assert js_divergence(x[:, 0], x[:, 0].clone()) == 0.0
    numbers = layer_geometry(x, x.clone())
    assert numbers["js"] == 0.0 and numbers["distance"] == 0.0
    assert js_divergence(torch.zeros(4), torch.ones(4)) == pytest.approx(1.0)


def test_refusal_vocabulary_comes_from_the_keyword_judge(byte_tok):
    words = refusal_words()
    assert {"i", "sorry", "cannot", "can't", "unable"} <= set(words)
    assert not {"help", "provide", "with", "the"} & set(words)
    ids = refusal_token_ids(byte_tok)
    assert byte_tok.encode("I", add_special_tokens=False)[0] in ids
    assert byte_tok.encode("Sorry", add_special_tokens=False)[0] in ids


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_forced_answer_prefers_target_then_p_uu_then_the_option(tmp_path):
    unsafe = load_benchmark("generic", write_jsonl(tmp_path / "u.jsonl", [{"prompt": "placeholder request"}]))
    assert forced_answer(unsafe, tmp_path, "a neutral reply")[1:] == ("a neutral reply", "analysis.answer_text")
    write_jsonl(tmp_path / "train.jsonl", [
        {"label": "safe", "prompt": "name a fruit", "response": "An apple."},
        {"label": "unsafe_unsafe", "prompt": "placeholder question", "response": "Placeholder answer."},
    ])
    prompt, answer, source = forced_answer(unsafe, tmp_path, "a neutral reply")
    assert (prompt, answer) == ("placeholder question", "Placeholder answer.") and source.startswith("P_uu")
    targeted = load_benchmark("generic", write_jsonl(tmp_path / "t.jsonl", [{"prompt": "another request", "target": "Sure"}]))
    assert forced_answer(targeted, tmp_path, "a neutral reply")[:2] == ("another request", "Sure")


SAFE = ["How do I bake bread?", "Name three colours.", "What is a noun?", "Tell me about rivers.", "Count to five."]
UNSAFE = [f"Placeholder unsafe request number {i}." for i in range(5)]


def tiny_trained_run(folder: Path):
    """The tiny model after two training steps on the shipped sample data."""
    from repbend.training import train

    config = load_config(ROOT / "configs" / "tiny-test.yaml", [f"output_dir={folder}", "steps=2", "train.save_every=2"])
    train(config, progress=False)
    return folder


def test_analyze_command_writes_every_artifact(tmp_path):
    run = tiny_trained_run(tmp_path / "run")
    safe = write_jsonl(tmp_path / "safe.jsonl", [{"prompt": p, "expected": "benign"} for p in SAFE])
    unsafe = write_jsonl(tmp_path / "unsafe.jsonl", [{"prompt": p} for p in UNSAFE])
    out = tmp_path / "analysis"
    code = main(["analyze", str(ROOT / "configs" / "tiny-test.yaml"), f"output_dir={run}", "-q",
                 f"analysis.safe_path={safe}", f"analysis.unsafe_path={unsafe}", f"analysis.output_dir={out}",
                 "analysis.answer_text=Here is a short neutral reply.", "analysis.batch_size=2",
                 "analysis.max_answer_tokens=4", "analysis.positions=3"])
    assert code == 0
    for name in ("analysis.json", "analysis.md", "geometry_by_layer.png", "pca_by_layer.png",
                 "lens_harmful_prompt.png", "lens_forced_answer.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    numbers = json.loads((out / "analysis.json").read_text())
    assert numbers["layers"] == [0, 1, 2, 3, 4]
    assert numbers["settings"]["adapter"] == str(adapter_folder(run))
    assert numbers["settings"]["forced_answer_source"] == "analysis.answer_text"
    for state in ("base", "bent"):
        values = numbers["states"][state]
        assert all(len(v) == 5 for v in values["geometry"].values())
        assert len(values["pca"]["coords"][0]) == len(SAFE) + len(UNSAFE)
        grid = values["lens"]["forced_answer"]
        assert len(grid["top_tokens"]) == 5 and len(grid["tokens"]) == 3 + 4
        assert all(0 <= share <= 1 for share in values["refusal_share"]["unsafe"])
    markdown = (out / "analysis.md").read_text()
    assert "geometry_by_layer.png" in markdown and "lens_forced_answer.png" in markdown

    from repbend.commands.analyze import AnalysisResult

    result = AnalysisResult(out, numbers, {k: Path(v) for k, v in numbers["files"].items()})
    lines = report_lines(result, run)
    assert any("../analysis/geometry_by_layer.png" in line for line in lines)

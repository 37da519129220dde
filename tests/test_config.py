"""Typed configuration: the shipped YAML files, the recipe's exact values, overrides, errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from repbend.config import Config, DataConfig, SourceConfig, load_config, save_config
from repbend.errors import ConfigError
from repbend.models import lora_block_indices, resolve_layers

CONFIGS = Path(__file__).parents[1] / "configs"
RECIPE = CONFIGS / "recipe.yaml"


def test_configs_folder_has_the_recipe():
    assert RECIPE.is_file()


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    config = load_config(path)
    assert isinstance(config, Config)
    assert config.loss.method == "repbend"
    assert all(isinstance(source, SourceConfig) for source in config.data.sources)
    assert config.output_dir


def test_recipe_values_are_exactly_spec():
    c = load_config(RECIPE)
    # The loss: L = 0.5 d_s - 0.5 d_u + 0.1 c + 0.3 k + 0 e, KL at T=2, batchmean, plain L2.
    assert (c.loss.safe_coef, c.loss.unsafe_coef, c.loss.cosine_coef, c.loss.kl_coef, c.loss.paired_coef) == (
        0.5, 0.5, 0.1, 0.3, 0.0,
    )
    assert c.loss.kl_temperature == 2.0
    assert c.loss.kl_reduction == "batchmean"
    assert c.loss.norm == "l2"
    assert c.loss.loss_mode == "response_all"
    assert c.loss.target_layers == list(range(20, 31))
    assert c.loss.safe_layers == "all"
    assert c.loss.cosine_rows == "unsafe"
    assert c.loss.cosine_positions == "prompt_last"
    assert c.loss.unsafe_distance_cap is None
    assert c.loss.refusal_ce_coef == 0.0
    assert c.loss.safe_includes_refusals is True
    # Training.
    assert c.train.lr == 1e-5
    assert c.train.steps == 450
    assert (c.train.micro_batch, c.train.grad_accum) == (4, 4)
    assert c.train.scheduler == "constant"
    assert c.train.warmup_steps == 0
    assert c.train.weight_decay == 0.0
    assert c.train.seed == 42
    assert c.data.seed == 0
    assert (c.lora.r, c.lora.alpha, c.lora.dropout) == (16, 16, 0.05)
    assert sorted(c.lora.target_modules) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    # Data: the reference code's fixed caps (prompt 512, response 512, retain 1024), 10k/20k/20k/10k rows.
    assert (c.data.max_prompt_tokens, c.data.max_response_tokens, c.data.max_retain_tokens) == (512, 512, 1024)
    assert (c.data.max_safe, c.data.max_unsafe_safe, c.data.max_unsafe_unsafe, c.data.max_retain) == (
        10000, 20000, 20000, 10000,
    )


def test_recipe_lora_covers_blocks_0_to_30_of_32():
    c = load_config(RECIPE)
    layers = resolve_layers(c.loss.target_layers, 32, "loss.target_layers")
    assert layers == list(range(20, 31))
    assert lora_block_indices(c.lora, layers, 32) == list(range(0, 31))


def test_defaults_are_the_recipe_loss():
    # Options beyond the recipe are off by default, too.
    c = load_config(None)
    assert (c.loss.safe_coef, c.loss.unsafe_coef, c.loss.cosine_coef, c.loss.kl_coef, c.loss.paired_coef) == (
        0.5, 0.5, 0.1, 0.3, 0.0,
    )
    assert c.loss.unsafe_distance_cap is None and c.loss.refusal_ce_coef == 0.0
    assert c.train.lr == 1e-5 and c.train.steps == 450 and c.train.scheduler == "constant"


# ---------------------------------------------------------------- overrides


def test_dotted_override_sets_value():
    c = load_config(RECIPE, ["train.lr=1e-4"])
    assert c.train.lr == 1e-4 and isinstance(c.train.lr, float)
    assert c.train.steps == 450  # the rest is untouched


def test_alias_override():
    c = load_config(RECIPE, ["steps=3", "lr=0.5", "seed=7", "model=some/where"])
    assert c.train.steps == 3
    assert c.train.lr == 0.5
    assert c.train.seed == 7
    assert c.model.name_or_path == "some/where"


def test_list_override():
    c = load_config(RECIPE, ["loss.target_layers=[1,2]"])
    assert c.loss.target_layers == [1, 2]
    c = load_config(RECIPE, ["loss.target_layers=auto"])
    assert c.loss.target_layers == "auto"


def test_null_override_and_later_wins():
    c = load_config(RECIPE, ["loss.unsafe_distance_cap=40", "loss.unsafe_distance_cap=null", "train.steps=5", "train.steps=6"])
    assert c.loss.unsafe_distance_cap is None
    assert c.train.steps == 6
    c = load_config(RECIPE, ["loss.unsafe_distance_cap=40"])
    assert c.loss.unsafe_distance_cap == 40.0


def test_override_without_file_uses_defaults():
    c = load_config(None, ["train.steps=3"])
    assert c.train.steps == 3 and c.model.name_or_path == "smollm2-135m"


def test_unknown_override_key_suggests_close_match():
    with pytest.raises(ConfigError) as info:
        load_config(RECIPE, ["train.lrr=1"])
    message = str(info.value)
    assert "train.lrr" in message and "train.lr" in message.replace("train.lrr", "")


def test_unknown_key_in_file_suggests_close_match(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("loss:\n  kl_coeff: 0.3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "loss.kl_coeff" in message and "loss.kl_coef" in message.replace("loss.kl_coeff", "")
    assert str(path) in message


def test_unknown_section_errors(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("trian:\n  lr: 1.0\n")
    with pytest.raises(ConfigError, match="trian"):
        load_config(path)


def test_override_without_equals_errors():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.lr"])


@pytest.mark.parametrize(
    "override, key, value",
    [
        ("train.steps=abc", "train.steps", "abc"),
        ("train.steps=1.5", "train.steps", "1.5"),
        ("train.lr=fast", "train.lr", "fast"),
        ("train.gradient_checkpointing=maybe", "train.gradient_checkpointing", "maybe"),
        ("lora.r=[1]", "lora.r", "[1]"),
    ],
)
def test_wrong_type_names_key_and_value(override, key, value):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert key in message and value in message


def test_wrong_type_in_file_names_file_key_and_value(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  micro_batch: four\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and "train.micro_batch" in message and "four" in message


def test_bool_is_not_an_integer():
    with pytest.raises(ConfigError, match="train.steps"):
        load_config(None, ["train.steps=true"])


def test_missing_config_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert str(missing) in str(info.value) and "does not exist" in str(info.value)


def test_invalid_yaml_and_non_mapping(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="YAML"):
        load_config(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listing)


def test_sources_are_typed_and_checked(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  sources:\n    - {path: /x.jsonl, layout: generic, kinds: [retain]}\n")
    c = load_config(path)
    assert c.data.sources == [SourceConfig(path="/x.jsonl", layout="generic", kinds=["retain"])]
    path.write_text("data:\n  sources:\n    - {path: /x.jsonl, layot: generic}\n")
    with pytest.raises(ConfigError, match="layout"):
        load_config(path)


# ---------------------------------------------------------------- save / load


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_save_config_round_trips(path, tmp_path):
    config = load_config(path, ["train.lr=3e-4", "loss.unsafe_distance_cap=40"])
    saved = tmp_path / "sub" / "config.yaml"
    save_config(config, saved)
    assert saved.is_file() and not saved.with_suffix(".yaml.tmp").exists()
    again = load_config(saved)
    assert again == config
    assert isinstance(again.data, DataConfig)
    assert again.train.lr == 3e-4 and again.loss.unsafe_distance_cap == 40.0


def test_saved_config_has_every_default(tmp_path):
    import yaml

    save_config(load_config(None), tmp_path / "c.yaml")
    data = yaml.safe_load((tmp_path / "c.yaml").read_text())
    assert set(data) == {"model", "lora", "data", "loss", "train", "eval", "build", "compare", "tune", "analysis", "output_dir"}
    assert data["loss"]["kl_temperature"] == 2.0 and data["train"]["micro_batch"] == 4


# ---------------------------------------------------------------- edge cases


@pytest.mark.parametrize("override, key", [("lora.layers=2", "layers"), ("loss.target_layers=3", "target_layers")])
def test_single_integer_layer_override_is_not_stringified(override, key):
    try:
        config = load_config(None, [override])
    except ConfigError:
        return  # rejecting it with a clear error is fine, too
    section = config.lora if override.startswith("lora") else config.loss
    assert getattr(section, key) in (2, 3, [2], [3])


def test_override_into_empty_section(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\nlora:\n")
    assert load_config(path).train.steps == 450  # the file alone is fine
    assert load_config(path, ["train.steps=3"]).train.steps == 3


def test_include_lays_a_config_over_another(tmp_path):
    (tmp_path / "base.yaml").write_text("train: {steps: 30, lr: 0.001}\nloss: {safe_kl_coef: 8.0}\noutput_dir: runs/a\n")
    (tmp_path / "top.yaml").write_text("include: base.yaml\ntrain: {steps: 20}\noutput_dir: runs/b\n")
    config = load_config(tmp_path / "top.yaml", ["train.lr=0.002"])
    assert (config.train.steps, config.train.lr, config.loss.safe_kl_coef, config.output_dir) == (20, 0.002, 8.0, "runs/b")
    (tmp_path / "loop.yaml").write_text("include: loop.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "missing.yaml").write_text("include: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml does not exist .included from"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("override, named", [
    ("train.lr=-1", "train.lr: must be > 0, got -1.0"),
    ("train.micro_batch=0", "train.micro_batch: must be >= 1, got 0"),
    ("train.save_every=0", "train.save_every: must be >= 1, got 0"),
    ("train.scheduler=bogus", "train.scheduler: must be one of constant, constant_with_warmup, linear, cosine, got 'bogus'"),
    ("train.steps=-3", "train.steps: must be >= 1, got -3"),
    ("train.steps=0", "train.steps: must be >= 1, got 0"),
    ("train.grad_accum=0", "train.grad_accum: must be >= 1, got 0"),
    ("lora.r=0", "lora.r: must be >= 1, got 0"),
    ("lora.dropout=1.5", "lora.dropout: must be in [0, 1), got 1.5"),
    ("eval.max_new_tokens=0", "eval.max_new_tokens: must be >= 1, got 0"),
    ("train.divergence_factor=0.5", "train.divergence_factor: must be > 1, got 0.5"),
    ("build.dev_fraction=1", "build.dev_fraction: must be in (0, 1), got 1.0"),
    ("build.near_duplicate_cosine=1.5", "build.near_duplicate_cosine: must be in (0, 1], got 1.5"),
    ("build.temperature=0", "build.temperature: must be > 0, got 0.0"),
])
def test_out_of_range_settings_name_file_key_and_value(override, named):
    path = CONFIGS / "tiny-test.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(path, [override])
    assert str(caught.value) == f"{path}: {named}"


def test_off_settings_pass_the_range_checks():
    config = load_config(CONFIGS / "tiny-test.yaml", ["train.max_grad_norm=null", "train.divergence_factor=null"])
    assert config.train.max_grad_norm is None and config.train.divergence_factor is None

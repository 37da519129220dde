"""Typed configuration: the shipped YAML files, the recipe's exact values, overrides, errors."""
from __future__ import annotations

import dataclasses
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
    assert (c.loss.settings.safe_coef, c.loss.settings.unsafe_coef, c.loss.settings.cosine_coef, c.loss.settings.kl_coef, c.loss.settings.paired_coef) == (
        0.5, 0.5, 0.1, 0.3, 0.0,
    )
    assert c.loss.settings.kl_temperature == 2.0
    assert c.loss.settings.kl_reduction == "batchmean"
    assert c.loss.settings.norm == "l2"
    assert c.loss.settings.loss_mode == "response_all"
    assert c.loss.settings.target_layers == list(range(20, 31))
    assert c.loss.settings.safe_layers == "all"
    assert c.loss.settings.cosine_rows == "unsafe"
    assert c.loss.settings.cosine_positions == "prompt_last"
    assert c.loss.settings.unsafe_distance_cap is None
    assert c.loss.settings.refusal_ce_coef == 0.0
    assert c.loss.settings.safe_includes_refusals is True
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
    layers = resolve_layers(c.loss.settings.target_layers, 32, "loss.repbend.target_layers")
    assert layers == list(range(20, 31))
    assert lora_block_indices(c.lora, layers, 32) == list(range(0, 31))


def test_defaults_are_the_recipe_loss():
    # Options beyond the recipe are off by default, too.
    c = load_config(None)
    assert (c.loss.settings.safe_coef, c.loss.settings.unsafe_coef, c.loss.settings.cosine_coef, c.loss.settings.kl_coef, c.loss.settings.paired_coef) == (
        0.5, 0.5, 0.1, 0.3, 0.0,
    )
    assert c.loss.settings.unsafe_distance_cap is None and c.loss.settings.refusal_ce_coef == 0.0
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
    c = load_config(RECIPE, ["loss.repbend.target_layers=[1,2]"])
    assert c.loss.settings.target_layers == [1, 2]
    c = load_config(RECIPE, ["loss.repbend.target_layers=auto"])
    assert c.loss.settings.target_layers == "auto"


def test_null_override_and_later_wins():
    c = load_config(RECIPE, ["loss.repbend.unsafe_distance_cap=40", "loss.repbend.unsafe_distance_cap=null", "train.steps=5", "train.steps=6"])
    assert c.loss.settings.unsafe_distance_cap is None
    assert c.train.steps == 6
    c = load_config(RECIPE, ["loss.repbend.unsafe_distance_cap=40"])
    assert c.loss.settings.unsafe_distance_cap == 40.0


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
    path.write_text("loss:\n  repbend:\n    kl_coeff: 0.3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "loss.repbend.kl_coeff" in message and "loss.repbend.kl_coef" in message.replace("loss.repbend.kl_coeff", "")
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
    config = load_config(path, ["train.lr=3e-4", "loss.repbend.unsafe_distance_cap=40"])
    saved = tmp_path / "sub" / "config.yaml"
    save_config(config, saved)
    assert saved.is_file() and not saved.with_suffix(".yaml.tmp").exists()
    again = load_config(saved)
    assert again == config
    assert isinstance(again.data, DataConfig)
    assert again.train.lr == 3e-4 and again.loss.settings.unsafe_distance_cap == 40.0


def test_saved_config_has_every_default(tmp_path):
    import yaml

    save_config(load_config(None), tmp_path / "c.yaml")
    data = yaml.safe_load((tmp_path / "c.yaml").read_text())
    assert set(data) == {section.name for section in dataclasses.fields(Config)}
    assert data["loss"]["repbend"]["kl_temperature"] == 2.0 and data["train"]["micro_batch"] == 4


# ---------------------------------------------------------------- edge cases


@pytest.mark.parametrize("override, key", [("lora.layers=2", "layers"), ("loss.repbend.target_layers=3", "target_layers")])
def test_single_integer_layer_override_is_not_stringified(override, key):
    try:
        config = load_config(None, [override])
    except ConfigError:
        return  # rejecting it with a clear error is fine, too
    section = config.lora if override.startswith("lora") else config.loss.settings
    assert getattr(section, key) in (2, 3, [2], [3])


def test_override_into_empty_section(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\nlora:\n")
    assert load_config(path).train.steps == 450  # the file alone is fine
    assert load_config(path, ["train.steps=3"]).train.steps == 3


def test_include_lays_a_config_over_another(tmp_path):
    (tmp_path / "base.yaml").write_text("train: {steps: 30, lr: 0.001}\nloss: {repbend: {safe_kl_coef: 8.0}}\noutput_dir: runs/a\n")
    (tmp_path / "top.yaml").write_text("include: base.yaml\ntrain: {steps: 20}\noutput_dir: runs/b\n")
    config = load_config(tmp_path / "top.yaml", ["train.lr=0.002"])
    assert (config.train.steps, config.train.lr, config.loss.settings.safe_kl_coef, config.output_dir) == (20, 0.002, 8.0, "runs/b")
    (tmp_path / "loop.yaml").write_text("include: loop.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "missing.yaml").write_text("include: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml does not exist .included from"):
        load_config(tmp_path / "missing.yaml")


def test_include_appends_a_list_under_key_plus(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "eval:\n  benchmarks:\n    - {name: generic, label: harmful, path: h.jsonl, attacks: [direct]}\n")
    (tmp_path / "top.yaml").write_text(
        "include: base.yaml\neval:\n  benchmarks+:\n    - {name: generic, label: whitebox, path: h.jsonl, attacks: [gcg]}\n")
    config = load_config(tmp_path / "top.yaml")
    assert [(b.label, b.attacks) for b in config.eval.benchmarks] == [("harmful", ["direct"]), ("whitebox", ["gcg"])]
    # Without an include the list is the file's own.
    (tmp_path / "alone.yaml").write_text("eval:\n  benchmarks+:\n    - {name: generic, path: h.jsonl}\n")
    assert len(load_config(tmp_path / "alone.yaml").eval.benchmarks) == 1
    (tmp_path / "bad.yaml").write_text("include: base.yaml\neval: {benchmarks+: {name: generic}}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: benchmarks\+: appends a list to a list"):
        load_config(tmp_path / "bad.yaml")


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
    # Methods' settings (their own rules and Literal choices), and choices of other sections.
    ("loss.rmu.steering_coef=-1", "loss.rmu.steering_coef: must be > 0, got -1.0"),
    ("loss.npo.beta=0", "loss.npo.beta: must be > 0, got 0.0"),
    ("loss.repbend.kl_coef=-0.1", "loss.repbend.kl_coef: must be >= 0, got -0.1"),
    ("loss.repbend.norm=l3", "loss.repbend.norm: must be one of l2, squared, got 'l3'"),
    ("loss.repbend.loss_mode=response_some",
     "loss.repbend.loss_mode: must be one of response_all, prompt_last, prompt_all, prompt_response, got 'response_some'"),
    ("loss.rmu.layer=eight", "loss.rmu.layer: expected an integer or one of auto, got 'eight'"),
    ("loss.circuit_breaker.target_layers=some", "loss.circuit_breaker.target_layers: expected a list or one of auto, "
                                                "all, got 'some'"),
    ("loss.retain_coef=-1", "loss.retain_coef: must be >= 0, got -1.0"),
    ("loss.method=nope", "loss.method 'nope' is unknown; available: circuit_breaker, dpo, npo, refusal_sft, repbend, "
                         "rmu, sft_unsafe, task_arithmetic"),
    ("model.dtype=float64", "model.dtype: must be one of auto, float32, bfloat16, float16, got 'float64'"),
    ("eval.backend=vlm", "eval.backend: must be one of hf, vllm, endpoint, got 'vlm'"),
    ("tune.sampler=cmaes", "tune.sampler: must be one of tpe, nsga2, grid, got 'cmaes'"),
])
def test_out_of_range_settings_name_file_key_and_value(override, named):
    path = CONFIGS / "tiny-test.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(path, [override])
    assert str(caught.value) == f"{path}: {named}"


def test_off_settings_pass_the_range_checks():
    config = load_config(CONFIGS / "tiny-test.yaml", ["train.max_grad_norm=null", "train.divergence_factor=null"])
    assert config.train.max_grad_norm is None and config.train.divergence_factor is None


# ---------------------------------------------------------------- method settings


def test_each_method_reads_its_own_section():
    from repbend.methods.circuit_breaker import CircuitBreakerSettings
    from repbend.methods.rmu import RMUSettings

    config = load_config(None, ["loss.method=rmu", "loss.rmu.steering_coef=120", "loss.circuit_breaker.alpha=5"])
    assert config.loss.settings == RMUSettings(steering_coef=120.0)
    # Another method's section is kept (and checked), the method's own is always there.
    assert config.loss.section("circuit_breaker") == CircuitBreakerSettings(alpha=5.0)
    assert config.loss.section("npo").beta == 0.1  # no section: the defaults
    assert list(config.loss.sections) == ["rmu", "circuit_breaker"]
    assert load_config(None, ["loss.method=refusal_sft"]).loss.settings is None  # it has none


def test_method_sections_round_trip_through_to_dict_and_yaml(tmp_path):
    import yaml

    from repbend.config import from_dict, to_dict

    config = load_config(CONFIGS / "tiny-test.yaml", ["loss.method=npo", "loss.npo.beta=0.2", "loss.rmu.seed=3"])
    data = to_dict(config)
    assert data["loss"] == {"method": "npo", "retain_coef": 1.0, "npo": {"beta": 0.2},
                            "repbend": data["loss"]["repbend"], "rmu": {"layer": "auto", "steering_coef": 6.5,
                                                                       "retain_coef": 1200.0, "seed": 3}}
    assert from_dict(data) == config
    save_config(config, tmp_path / "c.yaml")
    assert "sections" not in yaml.safe_load((tmp_path / "c.yaml").read_text())["loss"]
    assert load_config(tmp_path / "c.yaml") == config


def test_settings_check_themselves_however_made():
    from repbend.methods.npo import NPOSettings
    from repbend.methods.repbend import RepBendSettings

    with pytest.raises(ConfigError, match=r"^loss.npo.beta: must be > 0, got -1.0$"):
        NPOSettings(beta=-1)
    with pytest.raises(ConfigError, match="loss.repbend.cosine_rows: must be one of unsafe, unsafe_and_refusal"):
        RepBendSettings(cosine_rows="all")
    assert NPOSettings(beta=1).beta == 1.0 and isinstance(NPOSettings(beta=1).beta, float)


def test_unknown_setting_in_a_method_section_suggests_close_match():
    with pytest.raises(ConfigError, match=r"unknown config key 'loss.rmu.steering'; did you mean loss.rmu.steering_coef"):
        load_config(None, ["loss.rmu.steering=3"])


def test_typed_lists_build_and_check_their_items(tmp_path):
    from repbend.config import BenchmarkSpec

    config = load_config(None, ["eval.benchmarks=[{name: generic, path: /x.jsonl, limit: 5}]"])
    assert config.eval.benchmarks == [BenchmarkSpec(name="generic", path="/x.jsonl", limit=5)]
    with pytest.raises(ConfigError, match=r"eval.benchmarks\[0\].limit: expected an integer or null, got 'many'"):
        load_config(None, ["eval.benchmarks=[{name: generic, limit: many}]"])
    with pytest.raises(ConfigError, match=r"data.sources\[1\]: expected a mapping, got 3"):
        load_config(None, ["data.sources=[{path: /x.jsonl}, 3]"])
    with pytest.raises(ConfigError, match=r"data.sources\[0\].kinds\[0\]: expected a string, got \[1\]"):
        load_config(None, ["data.sources=[{path: /x.jsonl, kinds: [[1]]}]"])


# ---------------------------------------------------------------- renamed keys


@pytest.fixture
def fresh_warnings(monkeypatch):
    """Renamed keys warn once per process: forget the ones already warned about."""
    from repbend import config

    monkeypatch.setattr(config, "_WARNED", set())


@pytest.mark.parametrize("old, new, value", [
    ("loss.cb_alpha", ("circuit_breaker", "alpha"), 5.0),
    ("loss.cb_target_layers", ("circuit_breaker", "target_layers"), [2]),
    ("loss.rmu_layer", ("rmu", "layer"), 3),
    ("loss.rmu_steering_coef", ("rmu", "steering_coef"), 120.0),
    ("loss.rmu_retain_coef", ("rmu", "retain_coef"), 10.0),
    ("loss.rmu_seed", ("rmu", "seed"), 7),
    ("loss.dpo_beta", ("dpo", "beta"), 0.3),
    ("loss.ta_safe_weight", ("task_arithmetic", "safe_weight"), 0.7),
    ("loss.ta_unsafe_weight", ("task_arithmetic", "unsafe_weight"), 0.2),
    ("loss.kl_coef", ("repbend", "kl_coef"), 2.0),
    ("loss.target_layers", ("repbend", "target_layers"), [1, 2]),
])
def test_renamed_keys_still_work_with_a_warning_once(fresh_warnings, tmp_path, old, new, value):
    section, name = new
    with pytest.warns(FutureWarning, match=f"config key {old} is deprecated; use loss.{section}.{name}"):
        config = load_config(None, [f"{old}={value}"])
    assert getattr(config.loss.section(section), name) == value
    # Once per key: the same key in a file now loads silently, to the same value.
    path = tmp_path / "old.yaml"
    path.write_text(f"loss:\n  {old.split('.')[1]}: {value}\n")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert getattr(load_config(path).loss.section(section), name) == value


def test_npo_beta_was_both_betas_and_sets_both(fresh_warnings):
    with pytest.warns(FutureWarning, match="loss.npo_beta is deprecated; use loss.npo.beta and loss.repbend.unsafe_npo_beta"):
        config = load_config(None, ["loss.npo_beta=0.5"])
    assert config.loss.section("npo").beta == 0.5 and config.loss.settings.unsafe_npo_beta == 0.5


def test_renamed_keys_in_a_file_name_the_file_and_merge_with_includes(fresh_warnings, tmp_path):
    (tmp_path / "base.yaml").write_text("loss:\n  method: circuit_breaker\n  circuit_breaker: {alpha: 5.0}\n")
    (tmp_path / "old.yaml").write_text("include: base.yaml\nloss:\n  cb_target_layers: [2]\n  kl_coef: 0.7\n")
    with pytest.warns(FutureWarning, match=f"{tmp_path / 'old.yaml'}: config key loss.(cb_target_layers|kl_coef) is "
                                           "deprecated"):
        config = load_config(tmp_path / "old.yaml")
    assert (config.loss.settings.alpha, config.loss.settings.target_layers) == (5.0, [2])
    assert config.loss.section("repbend").kl_coef == 0.7
    # The old and the new key with different values in one mapping: which one meant?
    (tmp_path / "both.yaml").write_text("loss:\n  cb_alpha: 3.0\n  circuit_breaker: {alpha: 5.0}\n")
    with pytest.raises(ConfigError, match="loss.cb_alpha .renamed loss.circuit_breaker.alpha. and "
                                          "loss.circuit_breaker.alpha are both given"), pytest.warns(FutureWarning):
        load_config(tmp_path / "both.yaml")


def test_a_method_without_settings_has_no_section():
    from repbend.config import LossConfig

    with pytest.raises(ConfigError, match="unknown config key 'loss.refusal_sft'"):
        load_config(None, ["loss.refusal_sft={retain: 1}"])
    with pytest.raises(ConfigError, match="^loss.refusal_sft: method refusal_sft has no settings of its own$"):
        LossConfig(sections={"refusal_sft": {}})


def test_resume_check_reads_a_config_saved_with_the_flat_keys(tmp_path):
    import yaml

    from repbend.config import changed_training_settings, to_dict

    config = load_config(CONFIGS / "tiny-test.yaml", ["loss.repbend.kl_coef=0.7"])
    data = to_dict(config)
    old_loss = {"method": "repbend", "retain_coef": 1.0, "cb_alpha": 10.0, "rmu_seed": 0, "npo_beta": 0.1,
                **{key: value for key, value in data["loss"]["repbend"].items() if key != "unsafe_npo_beta"}}
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump({**data, "loss": old_loss}))
    assert changed_training_settings(saved, config) == {}
    # Another method's settings change nothing trained; the method's own do, by new key.
    assert changed_training_settings(saved, load_config(CONFIGS / "tiny-test.yaml", [
        "loss.repbend.kl_coef=0.7", "loss.rmu.seed=4"])) == {}
    changed = load_config(CONFIGS / "tiny-test.yaml", ["loss.repbend.kl_coef=0.9"])
    assert changed_training_settings(saved, changed) == {"loss.repbend.kl_coef": (0.7, 0.9)}


def test_a_saved_config_without_a_newer_setting_reads_it_as_its_default(tmp_path):
    import yaml

    from repbend.config import changed_training_settings, to_dict

    config = load_config(CONFIGS / "tiny-test.yaml")
    data = to_dict(config)
    del data["train"]["max_grad_norm"], data["train"]["report_to"]  # a run saved before they existed
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(data))
    assert changed_training_settings(saved, config) == {}
    clipped = load_config(CONFIGS / "tiny-test.yaml", ["train.max_grad_norm=0.5"])
    assert changed_training_settings(saved, clipped) == {"train.max_grad_norm": (1.0, 0.5)}
    # Settings that change nothing trained (where and how often a run writes) never count.
    assert changed_training_settings(saved, load_config(CONFIGS / "tiny-test.yaml", ["train.save_every=3"])) == {}


def test_configs_that_repeated_the_recipe_include_it():
    from repbend.config import to_dict

    recipe = to_dict(load_config(RECIPE))
    for name, differences in [("llama3-8b.yaml", {"output_dir": "runs/llama3-8b"}),
                              ("mistral-7b.yaml", {"output_dir": "runs/mistral-7b"})]:
        assert "include: recipe.yaml" in (CONFIGS / name).read_text()
        loaded = to_dict(load_config(CONFIGS / name))
        assert {key: value for key, value in loaded.items() if key not in ("model", "train", "output_dir")} == {
            key: value for key, value in recipe.items() if key not in ("model", "train", "output_dir")}
        assert loaded["output_dir"] == differences["output_dir"]
    mistral = load_config(CONFIGS / "mistral-7b.yaml")
    assert (mistral.model.name_or_path, mistral.train.steps) == ("mistralai/Mistral-7B-Instruct-v0.2", 300)
    assert to_dict(load_config(CONFIGS / "llama3-8b.yaml"))["train"] == recipe["train"]


def test_tune_constraints_default_to_the_main_jobs_goals():
    from repbend import goals
    from repbend.config import TuneConfig

    tune = TuneConfig()
    assert (tune.min_helpful_ratio, tune.min_overrefusal_ratio, tune.max_benign_degenerate) == (
        goals.MIN_HELPFUL_RATIO, goals.MIN_OVER_REFUSAL_RATIO, goals.MAX_BENIGN_DEGENERATE)

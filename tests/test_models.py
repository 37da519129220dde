"""Model loading, decoder-block discovery, layer bands and LoRA placement."""
from __future__ import annotations

import re

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from repbend.config import LoraSettings, ModelConfig
from repbend.errors import ConfigError
from repbend.models import (
    attach_lora,
    decoder_of,
    default_target_band,
    find_blocks,
    lm_head_logits,
    load_model,
    load_tokenizer,
    lora_block_indices,
    resolve_layers,
)

VOCAB = 300
LAYERS = 4

# Tiny configs (hidden 32, 4 blocks, vocabulary 300) and where each family keeps its blocks.
FAMILIES = {
    "llama": (dict(num_key_value_heads=2), "model.layers"),
    "mistral": (dict(num_key_value_heads=2), "model.layers"),
    "qwen2": (dict(num_key_value_heads=2), "model.layers"),
    "gemma2": (dict(num_key_value_heads=2, head_dim=8), "model.layers"),
    "phi3": (dict(num_key_value_heads=2, pad_token_id=0), "model.layers"),
    "gpt_neox": (dict(), "gpt_neox.layers"),
    "gpt2": (None, "transformer.h"),
}


def tiny(family: str, layers: int = LAYERS, seed: int = 0, **extra):
    settings, _ = FAMILIES[family]
    if settings is None:  # GPT-2 spells its sizes differently
        config = AutoConfig.for_model(
            "gpt2", n_embd=32, n_layer=layers, n_head=4, n_positions=128, vocab_size=VOCAB,
            bos_token_id=0, eos_token_id=0, **extra,
        )
    else:
        config = AutoConfig.for_model(
            family, hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
            vocab_size=VOCAB, max_position_embeddings=128, bos_token_id=0, eos_token_id=0, **settings, **extra,
        )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).float().eval()


def token_ids(batch=2, length=9, seed=0):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- layer bands


def test_default_band_recipe_depth():
    assert default_target_band(32) == list(range(20, 31))


def test_default_band_scaled_depths():
    assert default_target_band(30) == list(range(19, 29))
    # The recipe's band scaled: round(20L/32) .. round(31L/32) - 1, rounding half up.
    for blocks in (4, 8, 12, 16, 24, 26, 28, 40, 42, 48, 80):
        start = int(20 * blocks / 32 + 0.5)
        stop = int(31 * blocks / 32 + 0.5) - 1
        band = default_target_band(blocks)
        assert band == list(range(start, stop + 1)), blocks
        assert all(1 <= i <= blocks for i in band)


def test_default_band_never_empty_for_small_models():
    for blocks in (1, 2, 3):
        band = default_target_band(blocks)
        assert band and all(1 <= i <= blocks for i in band), (blocks, band)


def test_resolve_layers_auto_all_and_lists():
    assert resolve_layers("auto", 32, "x") == list(range(20, 31))
    assert resolve_layers("all", 4, "x") == [0, 1, 2, 3, 4]
    assert resolve_layers([3, 1, 3], 4, "x") == [1, 3]
    assert resolve_layers(2, 4, "x") == [2]


@pytest.mark.parametrize("bad", [[0], [5], [1, 33], [-1], ["2"]])
def test_resolve_layers_out_of_range_names_valid_range(bad):
    blocks = 32 if 33 in bad else 4
    with pytest.raises(ConfigError) as info:
        resolve_layers(bad, blocks, "loss.target_layers")
    message = str(info.value)
    assert f"1..{blocks}" in message and "loss.target_layers" in message


@pytest.mark.parametrize("bad", [[], "some", {"a": 1}])
def test_resolve_layers_rejects_other_specs(bad):
    with pytest.raises(ConfigError, match="loss.target_layers"):
        resolve_layers(bad, 4, "loss.target_layers")


def test_lora_block_indices():
    assert lora_block_indices(LoraSettings(), [2, 3], 4) == [0, 1, 2, 3]
    assert lora_block_indices(LoraSettings(), [1, 2], 4) == [0, 1, 2]
    assert lora_block_indices(LoraSettings(layers="all"), [1], 4) == [0, 1, 2, 3]
    assert lora_block_indices(LoraSettings(layers=[3, 1]), [2], 4) == [1, 3]
    assert lora_block_indices(LoraSettings(layers=[3, 1]), [], 4) == [1, 3]  # logits read every block
    with pytest.raises(ConfigError, match=r"0\.\.3"):
        lora_block_indices(LoraSettings(layers=[4]), [1], 4)


def test_lora_blocks_after_every_loss_layer_are_an_error():
    # Hidden state 2 is the output of blocks 0 and 1: LoRA on blocks 2..3 cannot move it
    # (RMU's layer under the main job's LoRA band was such a silent no-op).
    with pytest.raises(ConfigError, match=r"lora.layers starts at block 2.*hidden states \[1, 2\]"):
        lora_block_indices(LoraSettings(layers=[2, 3]), [1, 2], 4)


# ---------------------------------------------------------------- blocks and LoRA per family


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("layers", [2, 4])
def test_find_blocks(family, layers):
    model = tiny(family, layers=layers)
    blocks = find_blocks(model)
    assert blocks.prefix == FAMILIES[family][1]
    assert blocks.count == layers
    assert len(model.get_submodule(blocks.prefix)) == layers


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_attach_lora_restricts_blocks_and_keeps_outputs(family):
    model = tiny(family)
    ids = token_ids()
    with torch.no_grad():
        before = model(ids, output_hidden_states=True)
    prefix = FAMILIES[family][1]
    lora = attach_lora(model, LoraSettings(r=4, alpha=8), loss_layers=[2])  # recipe dropout 0.05, eval mode
    names = [name for name, _ in lora.named_modules() if name.endswith(".lora_A")]
    assert names
    blocks = set()
    for name in names:
        match = re.search(re.escape(prefix) + r"\.(\d+)\.", name)
        assert match, name  # LoRA only inside decoder blocks (no lm_head, no embeddings)
        blocks.add(int(match.group(1)))
    assert blocks == {0, 1, 2}  # blocks 0..max target index, block 3 untouched
    # Every linear layer of the adapted blocks is adapted ("all-linear").
    per_block = {b: sum(1 for n in names if f"{prefix}.{b}." in n) for b in blocks}
    assert len(set(per_block.values())) == 1
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # LoRA B starts at 0: the hidden states and logits are exactly the base model's.
    with torch.no_grad():
        after = lora(input_ids=ids, output_hidden_states=True)
    assert len(after.hidden_states) == LAYERS + 1
    for old, new in zip(before.hidden_states, after.hidden_states):
        assert torch.equal(old, new)
    assert torch.equal(before.logits, after.logits)


def test_attach_lora_named_target_modules_and_disable(make_tiny_model):
    model = make_tiny_model()
    lora = attach_lora(model, LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]), [1, 3])
    names = [name for name, _ in lora.named_modules() if name.endswith(".lora_A")]
    leaves = {name.split(".")[-2] for name in names}
    assert leaves == {"q_proj", "v_proj"}
    assert len(names) == 2 * 4  # two modules in blocks 0..3
    # Perturb LoRA B: the adapted model changes, the disabled adapter gives the base back.
    ids = token_ids()
    with torch.no_grad():
        base = lora(input_ids=ids).logits
        for name, parameter in lora.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
        changed = lora(input_ids=ids).logits
        with lora.disable_adapter():
            disabled = lora(input_ids=ids).logits
    assert not torch.allclose(base, changed)
    assert torch.allclose(base, disabled)
    # The decoder the methods read keeps the adapter.
    with torch.no_grad():
        hidden = decoder_of(lora)(input_ids=ids).last_hidden_state
    assert torch.allclose(lm_head_logits(lora, hidden), changed, atol=1e-5)


def test_attach_lora_target_module_string_is_not_substring_matched():
    model = tiny("gpt_neox")
    try:
        lora = attach_lora(model, LoraSettings(target_modules="dense_h_to_4h"), [2])
    except ConfigError:
        return  # rejecting a bare string is fine, too
    leaves = {name.split(".")[-2] for name, _ in lora.named_modules() if name.endswith(".lora_A")}
    assert leaves == {"dense_h_to_4h"}


def test_attach_lora_unknown_target_module_errors(make_tiny_model):
    with pytest.raises(ConfigError, match="q_proj"):
        attach_lora(make_tiny_model(), LoraSettings(target_modules=["nonexistent"]), [2])


# ---------------------------------------------------------------- LM head


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_lm_head_logits_equal_model_logits(family):
    model = tiny(family)
    ids = token_ids()
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        logits = lm_head_logits(model, out.hidden_states[-1])
    assert torch.allclose(logits, out.logits, atol=1e-6)


def test_lm_head_logits_gemma2_softcapping():
    # A cap far below the raw logits: the model's logits are squashed; ours must match.
    model = tiny("gemma2", final_logit_softcapping=0.05)
    assert model.config.final_logit_softcapping == 0.05
    ids = token_ids()
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        raw = model.get_output_embeddings()(out.hidden_states[-1])
        logits = lm_head_logits(model, out.hidden_states[-1])
    assert not torch.allclose(raw, out.logits, atol=1e-4)  # capping matters here
    assert out.logits.abs().max() <= 0.05 + 1e-6
    assert torch.allclose(logits, out.logits, atol=1e-6)
    # and through a PEFT wrapper
    lora = attach_lora(model, LoraSettings(r=2, alpha=2, dropout=0.0), [2])
    with torch.no_grad():
        assert torch.allclose(lm_head_logits(lora, out.hidden_states[-1]), out.logits, atol=1e-6)


# ---------------------------------------------------------------- tokenizer


def test_load_tokenizer_byte():
    tokenizer = load_tokenizer(ModelConfig(name_or_path="anything", tokenizer="byte"))
    assert tokenizer.chat_template and tokenizer.pad_token is not None
    assert tokenizer.padding_side == "right"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture
def templateless_folder(byte_tok, tmp_path):
    byte_tok.chat_template = None
    folder = tmp_path / "tok"
    byte_tok.save_pretrained(folder)
    return folder


def test_load_tokenizer_without_template_names_option(templateless_folder):
    with pytest.raises(ConfigError, match=r"model\.chat_template"):
        load_tokenizer(ModelConfig(name_or_path=str(templateless_folder)))


def test_load_tokenizer_template_text_or_file(templateless_folder, tmp_path):
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    tokenizer = load_tokenizer(ModelConfig(name_or_path=str(templateless_folder), chat_template=template))
    assert tokenizer.chat_template == template
    path = tmp_path / "template.jinja"
    path.write_text(template)
    tokenizer = load_tokenizer(ModelConfig(name_or_path=str(templateless_folder), chat_template=str(path)))
    assert tokenizer.chat_template == template
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hello"}], tokenize=False)
    assert rendered == "[user] hello\n"


def test_load_tokenizer_missing_template_file_errors(tmp_path):
    missing = tmp_path / "missing.jinja"
    with pytest.raises(ConfigError, match="missing.jinja"):
        load_tokenizer(ModelConfig(tokenizer="byte", chat_template=str(missing)))


def test_load_tokenizer_separate_source(templateless_folder, tmp_path):
    # model.tokenizer points elsewhere than the weights; a missing folder is a clear error.
    tokenizer = load_tokenizer(
        ModelConfig(name_or_path=str(tmp_path / "weights"), tokenizer=str(templateless_folder), chat_template="{{ 1 }}")
    )
    assert tokenizer.pad_token == "<|pad|>"
    with pytest.raises(ConfigError):
        load_tokenizer(ModelConfig(random_init={"model_type": "llama"}))  # no tokenizer for a random model


# ---------------------------------------------------------------- model loading


def test_load_model_from_saved_folder_identical_logits(tiny_llama, tmp_path):
    folder = tmp_path / "model"
    tiny_llama.save_pretrained(folder)
    loaded = load_model(ModelConfig(name_or_path=str(folder), dtype="float32", device="cpu"))
    assert not loaded.training
    assert next(loaded.parameters()).dtype == torch.float32
    ids = torch.randint(0, tiny_llama.config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, tiny_llama(ids).logits)


def test_load_model_random_init_is_seeded(byte_tok):
    config = ModelConfig(
        name_or_path="tiny", tokenizer="byte", dtype="float32", device="cpu",
        random_init={"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "num_key_value_heads": 2},
    )
    first, second = load_model(config, byte_tok), load_model(config, byte_tok)
    assert first.config.vocab_size == len(byte_tok)
    assert first.config.pad_token_id == byte_tok.pad_token_id
    for a, b in zip(first.parameters(), second.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="model_type"):
        load_model(ModelConfig(random_init={"hidden_size": 32}, device="cpu"))


def test_missing_gguf_is_a_clear_error(tmp_path):
    missing = tmp_path / "nowhere" / "model.Q4.gguf"
    for loader in (load_model, load_tokenizer):
        with pytest.raises(ConfigError) as info:
            loader(ModelConfig(name_or_path=str(missing), device="cpu"))
        assert str(missing) in str(info.value) and "does not exist" in str(info.value)


def test_missing_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot load"):
        load_model(ModelConfig(name_or_path=str(tmp_path / "empty-dir-that-is-not-there"), device="cpu"))


def test_file_that_is_not_a_model(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\0")
    with pytest.raises(ConfigError, match="not a model folder"):
        load_model(ModelConfig(name_or_path=str(path), device="cpu"))


def test_bad_dtype_errors():
    with pytest.raises(ConfigError, match="model.dtype"):
        load_model(ModelConfig(random_init={"model_type": "llama"}, dtype="float8", device="cpu"))


def _forbid_gguf_parsing(monkeypatch):
    import gguf

    def parse(*args, **kwargs):
        raise AssertionError("the GGUF file was parsed again")

    monkeypatch.setattr(gguf.GGUFReader, "__init__", parse)


def test_a_gguf_is_dequantized_once_into_a_cached_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("REPBEND_CACHE", str(tmp_path))
    config = ModelConfig(name_or_path="smollm2-135m", dtype="float32", device="cpu")
    tokenizer = load_tokenizer(config)  # the first load converts
    [folder] = (tmp_path / "models").iterdir()
    assert folder.name.startswith("SmolLM2-135M-Instruct.Q4_1-")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {path.name for path in folder.iterdir()}
    written = (folder / "model.safetensors").stat().st_mtime_ns
    _forbid_gguf_parsing(monkeypatch)
    model = load_model(config, tokenizer)
    again = load_tokenizer(config)
    assert (folder / "model.safetensors").stat().st_mtime_ns == written
    assert again.chat_template == tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    assert again("a placeholder request")["input_ids"] == tokenizer("a placeholder request")["input_ids"]
    assert model.config.num_hidden_layers == 30 and model.dtype == torch.float32


@pytest.mark.slow
def test_the_cached_folder_holds_the_gguf_weights_and_tokenizer(tmp_path, monkeypatch):
    monkeypatch.setenv("REPBEND_CACHE", str(tmp_path))
    direct_config = ModelConfig(name_or_path="smollm2-135m", dtype="float32", device="cpu", cache_dequantized=False)
    direct_tokenizer = load_tokenizer(direct_config)
    direct = load_model(direct_config, direct_tokenizer)
    assert not (tmp_path / "models").exists()
    cached_config = ModelConfig(name_or_path="smollm2-135m", dtype="float32", device="cpu")
    cached = load_model(cached_config)
    cached_tokenizer = load_tokenizer(cached_config)
    assert direct.state_dict().keys() == cached.state_dict().keys()
    assert all(torch.equal(value, cached.state_dict()[key]) for key, value in direct.state_dict().items())
    text = direct_tokenizer.apply_chat_template([{"role": "user", "content": "name a placeholder"}], tokenize=False,
                                                add_generation_prompt=True)
    assert cached_tokenizer.apply_chat_template([{"role": "user", "content": "name a placeholder"}], tokenize=False,
                                                add_generation_prompt=True) == text
    assert cached_tokenizer(text)["input_ids"] == direct_tokenizer(text)["input_ids"]
    assert (cached_tokenizer.eos_token, cached_tokenizer.pad_token) == (direct_tokenizer.eos_token, direct_tokenizer.pad_token)



def test_an_unreadable_gguf_is_a_load_error_not_a_write_error(tmp_path, monkeypatch):
    import transformers

    def unreadable(*args, **kwargs):
        raise OSError("permission denied")

    monkeypatch.setenv("REPBEND_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", unreadable)
    gguf = tmp_path / "model.Q4.gguf"
    gguf.write_bytes(b"placeholder")
    with pytest.raises(ConfigError, match="cannot load model") as info:
        load_model(ModelConfig(name_or_path=str(gguf), device="cpu"))
    assert str(gguf) in str(info.value) and "permission denied" in str(info.value)
    assert not list((tmp_path / "cache").glob("models/*"))

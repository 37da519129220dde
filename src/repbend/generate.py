"""One generation path for every evaluation (and later data building and analysis).

A backend turns attacked prompts (chat messages, an optional assistant prefill,
optimised input embeddings, a steering of the hidden states) into responses: ``hf``
(transformers, batched, left-padded; the only one that takes embeddings or steering),
``vllm`` (optional extra, GPU, LoRA through its adapter support) and ``endpoint`` (an
OpenAI-compatible chat API as the model under test). :func:`generate` puts an on-disk
cache in front of any backend, keyed by (backend identity, prompt, settings), and writes
each finished batch at once, so an interrupted evaluation resumes without regenerating.
A backend's identity holds everything else that changes its answers (weights by content,
dtype, tokenizer, chat template, adapter weights, merging), so a changed setting never
reuses old generations.
"""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .cache import file_digest, folder_digest
from .chat_api import ChatClient
from .errors import ConfigError, RepbendError
from .hidden import shifted_hidden
from .models import EMBEDDED, _weights_source, embedded_gguf, find_blocks, load_model, load_tokenizer


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 512
    do_sample: bool = False  # greedy by default, as the paper's evaluation
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 8
    # hf backend: a batch whose rows x longest prompt (tokens) exceeds this is halved, so
    # a few long prompts (jailbreak templates) do not set the memory peak (None: no limit).
    max_batch_tokens: int | None = None


# How prompts are grouped into batches.
BATCHING = ("batch_size", "max_batch_tokens")


class GenerationError(RepbendError):
    """A backend failed (unreachable endpoint, bad reply); finished generations are kept."""


def request_key(prompt) -> dict:
    """What identifies a prompt, whatever the backend: messages, prefill, embeddings,
    steering (only when set, so keys of unsteered prompts stay as they were)."""
    key = {"messages": [dict(m) for m in prompt.messages], "prefill": prompt.prefill, "embeds": prompt.embeds_digest}
    if prompt.steering is not None:
        steering = prompt.steering
        key["steering"] = {"direction": steering.digest, "scale": steering.scale, "layers": list(steering.layers)}
    return key


def digest(value) -> str:
    """A short SHA-256 of a JSON-able value."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def weights_identity(model_config) -> dict:
    """What the weights are: local files by content (a GGUF or a folder rewritten in place
    gets a new identity), a hub model by the commit its revision resolved to."""
    name = model_config.name_or_path
    if model_config.random_init is not None:
        return {"random_init": model_config.random_init, "seed": model_config.seed}
    if name in EMBEDDED:
        return {"file": file_digest(embedded_gguf(name))}
    path = Path(name)
    if path.is_file():
        return {"file": file_digest(path)}
    if path.is_dir():
        return {"folder": folder_digest(path)}
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, model_config.gguf_file or "config.json", revision=model_config.revision)
    return {"hub_commit": Path(cached).parent.name if isinstance(cached, str) else None}


def tokenizer_digest(tokenizer) -> str:
    """The tokenizer's content (vocabulary, merges, added tokens, normaliser), not its name."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return digest(backend.to_str() if backend is not None else sorted(tokenizer.get_vocab().items()))


def stop_token_ids(model, tokenizer) -> list[int]:
    """Token ids that end an answer: the tokenizer's and the generation config's EOS, and
    the chat template's end-of-turn token, which is not always the EOS (a Qwen2 base
    tokenizer's EOS is ``<|endoftext|>`` while its turns end with ``<|im_end|>``)."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    ids.add(end_of_turn_id(tokenizer))
    return sorted(i for i in ids if i is not None)


def end_of_turn_id(tokenizer) -> int | None:
    """The special token the chat template writes right after an assistant message."""
    from jinja2 import TemplateError

    marker = "\u2063end\u2063"  # text no template adds on its own
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}], tokenize=False)
    except (TemplateError, ValueError, TypeError):  # an odd template: the EOS alone ends answers
        return None
    if not isinstance(text, str) or marker not in text:
        return None
    after = text.split(marker, 1)[1].lstrip()
    ids = tokenizer.encode(after, add_special_tokens=False) if after else []
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    return ids[0] if ids and ids[0] in special else None


def cut_at_stop(row: list[int], stop_ids: list[int]) -> list[int]:
    """A generated row up to its first stop token (finished rows are padded after it)."""
    for position, token in enumerate(row):
        if token in stop_ids:
            return row[:position]
    return row


class HFBackend:
    """Batched generation with a transformers model (base, base + PEFT adapter, merged)."""

    def __init__(self, model, tokenizer, identity: str):
        """``identity`` names the weights and adapter; what changes generations and can be
        read off the objects themselves (dtype, tokenizer content, chat template,
        generation config, stop tokens) is added to it here."""
        self.model, self.tokenizer = model.eval(), tokenizer
        self.stop_ids = stop_token_ids(model, tokenizer)
        generation_config = {k: v for k, v in model.generation_config.to_dict().items() if k != "transformers_version"}
        self.identity = identity + ":" + digest({
            "dtype": str(next(model.parameters()).dtype),
            "tokenizer": tokenizer_digest(tokenizer),
            "chat_template": tokenizer.chat_template,
            "generation_config": generation_config,
            "stop_ids": self.stop_ids,
        })

    @classmethod
    def load(cls, model_config, adapter: str | None = None, merge: bool = False) -> "HFBackend":
        """``merge`` folds the adapter into the weights (faster generation); callers that
        need ``disable_adapter()`` (the analysis) keep it unmerged."""
        tokenizer = load_tokenizer(model_config)
        model = load_model(model_config, tokenizer)
        setup = {"weights": weights_identity(model_config), "revision": model_config.revision,
                 "gguf_file": model_config.gguf_file, "tokenizer": model_config.tokenizer,
                 "trust_remote_code": model_config.trust_remote_code}
        if adapter:
            from peft import PeftModel

            weights = Path(adapter) / "adapter_model.safetensors"
            if not weights.is_file():
                raise ConfigError(f"adapter {adapter}: no adapter_model.safetensors there")
            model = PeftModel.from_pretrained(model, adapter)
            if merge:
                model = model.merge_and_unload()
            # Merging rounds the weights differently, so it is a different model to the cache.
            setup.update(adapter=file_digest(weights), merge_adapter=merge)
        return cls(model, tokenizer, f"hf:{model_config.name_or_path}:{digest(setup)}")

    def prompt_text(self, prompt) -> str:
        text = self.tokenizer.apply_chat_template(list(prompt.messages), tokenize=False, add_generation_prompt=True)
        return text + prompt.prefill

    def generate(self, prompts: list, settings: GenerationSettings) -> list:
        with torch.inference_mode():
            return self._generate(prompts, settings)

    def _generate(self, prompts: list, settings: GenerationSettings) -> list:
        texts = [None] * len(prompts)
        # One pass per steering (None: unsteered), so a steering hook touches its own prompts only.
        by_steering: dict = {}
        for i, prompt in enumerate(prompts):
            by_steering.setdefault(prompt.steering, []).append(i)
        for steering, indices in by_steering.items():
            with steered(self.model, steering) if steering is not None else nullcontext():
                with_embeds = [i for i in indices if prompts[i].embeds is not None]
                if with_embeds:
                    outputs = generate_from_embeds(
                        self.model, self.tokenizer, [prompts[i].embeds for i in with_embeds], settings.max_new_tokens
                    )
                    for i, text in zip(with_embeds, outputs):
                        texts[i] = text
                plain = [i for i in indices if prompts[i].embeds is None]
                if plain:
                    outputs = self._generate_text([self.prompt_text(prompts[i]) for i in plain], settings)
                    for i, text in zip(plain, outputs):
                        texts[i] = text
        return texts

    def _generate_text(self, prompts: list, settings: GenerationSettings) -> list:
        tokenizer = self.tokenizer
        side = tokenizer.padding_side
        tokenizer.padding_side = "left"  # new tokens must follow every prompt directly
        try:
            batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            tokenizer.padding_side = side
        rows, longest = batch["input_ids"].shape
        if settings.max_batch_tokens and rows > 1 and rows * longest > settings.max_batch_tokens:
            half = rows // 2
            return self._generate_text(prompts[:half], settings) + self._generate_text(prompts[half:], settings)
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        if settings.do_sample:
            torch.manual_seed(settings.seed)
        sampling = dict(do_sample=True, temperature=settings.temperature, top_p=settings.top_p) if settings.do_sample else dict(do_sample=False)
        output = self.model.generate(
            **batch,
            max_new_tokens=settings.max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=self.stop_ids,  # a row stops at its own end of turn
            **sampling,
        )
        new_tokens = output[:, batch["input_ids"].shape[1] :].tolist()
        return [tokenizer.decode(cut_at_stop(row, self.stop_ids), skip_special_tokens=True) for row in new_tokens]


@contextmanager
def steered(model, steering):
    """While open, ``model`` runs with ``steering.scale * steering.direction`` subtracted
    from the hidden states ``steering.layers`` (see ``shifted_hidden``)."""
    blocks = model.get_submodule(find_blocks(model).prefix)
    bad = [layer for layer in steering.layers if not 1 <= layer <= len(blocks)]
    if bad:
        raise ConfigError(f"steering: hidden state {bad[0]} is out of range; valid indices are 1..{len(blocks)}")
    with shifted_hidden(model, steering.layers, steering.scale * steering.direction):
        yield


@torch.no_grad()
def generate_from_embeds(model, tokenizer, embeds_list: list, max_new_tokens: int = 512) -> list[str]:
    """Greedy continuations of prompts given as input embeddings ([T_i, D] each), in one
    batch: left-padded with zero vectors that the attention mask hides."""
    weight = model.get_input_embeddings().weight
    longest = max(len(embeds) for embeds in embeds_list)
    inputs = torch.zeros(len(embeds_list), longest, weight.shape[1], dtype=weight.dtype, device=weight.device)
    attention_mask = torch.zeros(len(embeds_list), longest, dtype=torch.long, device=weight.device)
    for i, embeds in enumerate(embeds_list):
        inputs[i, longest - len(embeds) :] = embeds.to(weight.device, weight.dtype)
        attention_mask[i, longest - len(embeds) :] = 1
    # Given only embeddings, generate returns only the new tokens.
    output = model.generate(
        inputs_embeds=inputs,
        attention_mask=attention_mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return [tokenizer.decode(row, skip_special_tokens=True) for row in output]


class VLLMBackend:
    """vLLM (``pip install repbend[vllm]``, GPU only); adapters through LoRARequest. Prompts
    are rendered and tokenized by the same tokenizer as the HF backend (model.tokenizer,
    model.chat_template, no special tokens added to the rendered template, so no second
    BOS) and passed to vLLM as token ids; the engine gets model.revision, model.dtype and
    model.trust_remote_code."""

    def __init__(self, model_config, adapter: str | None = None, max_lora_rank: int = 64):
        try:
            from vllm import LLM
        except ImportError:
            raise ConfigError("the vllm backend needs the extra: pip install 'repbend[vllm]' (GPU only)") from None
        if model_config.random_init is not None:
            raise ConfigError("the vllm backend loads weights from a folder or the hub; model.random_init is hf only")
        path, extra = _weights_source(model_config)  # a GGUF becomes its dequantized folder
        if "gguf_file" in extra:
            raise ConfigError("the vllm backend needs model.cache_dequantized=true for a GGUF model")
        self.tokenizer = load_tokenizer(model_config)
        engine = {"model": path, "revision": model_config.revision, "dtype": model_config.dtype,
                  "trust_remote_code": model_config.trust_remote_code}
        if model_config.tokenizer and model_config.tokenizer != "byte":
            engine["tokenizer"] = model_config.tokenizer
        self.llm = LLM(**engine, enable_lora=adapter is not None, max_lora_rank=max_lora_rank)
        self.adapter = adapter
        folder = Path(path)
        setup = {
            "weights": folder_digest(folder) if folder.is_dir() else None,
            "engine": engine,
            "tokenizer": tokenizer_digest(self.tokenizer),
            "chat_template": self.tokenizer.chat_template,
            "adapter": file_digest(Path(adapter) / "adapter_model.safetensors") if adapter else None,
            "max_lora_rank": max_lora_rank if adapter else None,
        }
        self.identity = f"vllm:{model_config.name_or_path}:{digest(setup)}"

    def prompt_ids(self, prompt) -> list[int]:
        text = self.tokenizer.apply_chat_template(list(prompt.messages), tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text + prompt.prefill, add_special_tokens=False)["input_ids"]

    def generate(self, prompts: list, settings: GenerationSettings) -> list:
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        if any(p.embeds is not None for p in prompts):
            raise ConfigError("the vllm backend cannot take input embeddings; use the hf backend for that attack")
        if any(p.steering is not None for p in prompts):
            raise ConfigError("the vllm backend cannot steer hidden states (attack 'steering'); use the hf backend")
        params = SamplingParams(
            max_tokens=settings.max_new_tokens,
            temperature=settings.temperature if settings.do_sample else 0.0,
            top_p=settings.top_p if settings.do_sample else 1.0,
            seed=settings.seed,
        )
        requests = [{"prompt_token_ids": self.prompt_ids(p)} for p in prompts]
        lora = LoRARequest("adapter", 1, self.adapter) if self.adapter else None
        outputs = self.llm.generate(requests, params, lora_request=lora, use_tqdm=False)
        return [output.outputs[0].text for output in outputs]


class EndpointBackend:
    """An OpenAI-compatible ``/chat/completions`` endpoint as the model under test. A
    prefill is sent as a final assistant message with vLLM's ``continue_final_message``.
    Retries and failures follow :mod:`repbend.chat_api`; an empty reply is an error."""

    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY",
                 timeout: float = 120.0, retries: int = 3, backoff_s: float = 1.0):
        self.client = ChatClient(base_url, model, error=GenerationError, who="endpoint backend",
                                 api_key_env=api_key_env, timeout_s=timeout, retries=retries, backoff_s=backoff_s)
        self.identity = f"endpoint:{base_url}:{model}"

    def generate(self, prompts: list, settings: GenerationSettings) -> list:
        texts = []
        for prompt in prompts:
            if prompt.embeds is not None:
                raise ConfigError("an endpoint cannot take input embeddings; use the hf backend for that attack")
            if prompt.steering is not None:
                raise ConfigError("an endpoint cannot steer hidden states (attack 'steering'); use the hf backend")
            messages = [dict(m) for m in prompt.messages]
            body = {"messages": messages, "max_tokens": settings.max_new_tokens,
                    "temperature": settings.temperature if settings.do_sample else 0.0, "seed": settings.seed}
            if settings.do_sample:
                body["top_p"] = settings.top_p
            if prompt.prefill:
                messages.append({"role": "assistant", "content": prompt.prefill})
                body.update(continue_final_message=True, add_generation_prompt=False)
            texts.append(self.client.complete(body, prompt.row.id))
        return texts


class GenerationCache:
    """An append-only JSONL file of finished results, one line per key: generations (a
    prompt's answer) and, beside them, a model's capability scores."""

    def __init__(self, path: Path | None):
        self.path = Path(path) if path else None
        self.entries: dict = {}
        if self.path and self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill mid-write: that one prompt is regenerated
                self.entries[entry["key"]] = entry["response"]

    @staticmethod
    def key(identity: str, prompt, settings: GenerationSettings) -> str:
        # Sampling is seeded per batch, so only greedy answers are independent of batching.
        ignored = () if settings.do_sample else BATCHING
        settings_key = {k: v for k, v in asdict(settings).items() if k not in ignored}
        blob = json.dumps([identity, request_key(prompt), settings_key], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def add(self, items: dict) -> None:
        self.entries.update(items)
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as handle:
                handle.writelines(json.dumps({"key": k, "response": v}) + "\n" for k, v in items.items())
                handle.flush()
                os.fsync(handle.fileno())


def generate(backend, prompts: list, settings: GenerationSettings, cache: GenerationCache | None = None,
             progress: bool = True) -> tuple:
    """Responses for ``prompts`` in order; returns (responses, number actually generated).
    Prompts are batched by length so padding stays small."""
    from tqdm.auto import tqdm

    cache = cache or GenerationCache(None)
    keys = [cache.key(backend.identity, p, settings) for p in prompts]
    missing = sorted({k: i for i, k in enumerate(keys) if k not in cache.entries}.values(),
                     key=lambda i: len(json.dumps(request_key(prompts[i]))))
    bar = tqdm(total=len(missing), desc="generate", unit="prompt", disable=not progress or not missing)
    for start in range(0, len(missing), settings.batch_size):
        chunk = missing[start : start + settings.batch_size]
        responses = backend.generate([prompts[i] for i in chunk], settings)
        cache.add({keys[i]: response for i, response in zip(chunk, responses)})
        bar.update(len(chunk))
    bar.close()
    return [cache.entries[k] for k in keys], len(missing)

"""One generation path for every evaluation (and later data building and analysis).

A backend turns attacked prompts (chat messages, an optional assistant prefill, or
optimised input embeddings) into responses: ``hf`` (transformers, batched, left-padded),
``vllm`` (optional extra, GPU, LoRA through its adapter support) and ``endpoint`` (an
OpenAI-compatible chat API as the model under test). :func:`generate` puts an on-disk
cache in front of any backend, keyed by (backend identity, prompt, settings), and writes
each finished batch at once, so an interrupted evaluation resumes without regenerating.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .cache import file_digest, folder_digest
from .errors import ConfigError, RepbendError


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 512
    do_sample: bool = False  # greedy by default, as the paper's evaluation
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 8


class GenerationError(RepbendError):
    """A backend failed (unreachable endpoint, bad reply); finished generations are kept."""


def request_key(prompt) -> dict:
    """What identifies a prompt, whatever the backend: messages, prefill, embeddings."""
    return {"messages": [dict(m) for m in prompt.messages], "prefill": prompt.prefill, "embeds": prompt.embeds_digest}


class HFBackend:
    """Batched generation with a transformers model (base, base + PEFT adapter, merged)."""

    def __init__(self, model, tokenizer, identity: str):
        self.model, self.tokenizer, self.identity = model.eval(), tokenizer, identity

    @classmethod
    def load(cls, model_config, adapter: str | None = None, merge: bool = False) -> "HFBackend":
        """``merge`` folds the adapter into the weights (faster generation); callers that
        need ``disable_adapter()`` (the analysis) keep it unmerged."""
        from .models import load_model, load_tokenizer

        tokenizer = load_tokenizer(model_config)
        model = load_model(model_config, tokenizer)
        identity = f"hf:{model_config.name_or_path}"
        folder = Path(model_config.name_or_path)
        if folder.is_dir():  # a local folder (e.g. a task-arithmetic merge) can be rewritten in place
            identity += ":" + folder_digest(folder)
        if model_config.random_init is not None:
            identity += f":random:{json.dumps(model_config.random_init, sort_keys=True)}:{model_config.seed}"
        if adapter:
            from peft import PeftModel

            weights = Path(adapter) / "adapter_model.safetensors"
            if not weights.is_file():
                raise ConfigError(f"adapter {adapter}: no adapter_model.safetensors there")
            model = PeftModel.from_pretrained(model, adapter)
            if merge:
                model = model.merge_and_unload()
            identity += f"+adapter:{file_digest(weights)}"
        return cls(model, tokenizer, identity)

    def prompt_text(self, prompt) -> str:
        text = self.tokenizer.apply_chat_template(list(prompt.messages), tokenize=False, add_generation_prompt=True)
        return text + prompt.prefill

    @torch.no_grad()
    def generate(self, prompts: list, settings: GenerationSettings) -> list:
        texts = [None] * len(prompts)
        with_embeds = [i for i, p in enumerate(prompts) if p.embeds is not None]
        if with_embeds:
            from .eval.attacks.embedding import generate_from_embeds

            outputs = generate_from_embeds(
                self.model, self.tokenizer, [prompts[i].embeds for i in with_embeds], settings.max_new_tokens
            )
            for i, text in zip(with_embeds, outputs):
                texts[i] = text
        plain = [i for i, p in enumerate(prompts) if p.embeds is None]
        if plain:
            for i, text in zip(plain, self._generate_text([self.prompt_text(prompts[i]) for i in plain], settings)):
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
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        if settings.do_sample:
            torch.manual_seed(settings.seed)
        sampling = dict(do_sample=True, temperature=settings.temperature, top_p=settings.top_p) if settings.do_sample else dict(do_sample=False)
        output = self.model.generate(
            **batch,
            max_new_tokens=settings.max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **sampling,
        )
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        return [tokenizer.decode(row, skip_special_tokens=True) for row in new_tokens]


class VLLMBackend:
    """vLLM (``pip install repbend[vllm]``, GPU only); adapters through LoRARequest."""

    def __init__(self, model_path: str, adapter: str | None = None, max_lora_rank: int = 64, **engine_args):
        try:
            from vllm import LLM
        except ImportError:
            raise ConfigError("the vllm backend needs the extra: pip install 'repbend[vllm]' (GPU only)") from None
        self.llm = LLM(model=model_path, enable_lora=adapter is not None, max_lora_rank=max_lora_rank, **engine_args)
        self.tokenizer = self.llm.get_tokenizer()
        self.adapter = adapter
        self.identity = f"vllm:{model_path}" + (f"+adapter:{file_digest(Path(adapter) / 'adapter_model.safetensors')}" if adapter else "")

    def generate(self, prompts: list, settings: GenerationSettings) -> list:
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        if any(p.embeds is not None for p in prompts):
            raise ConfigError("the vllm backend cannot take input embeddings; use the hf backend for that attack")
        params = SamplingParams(
            max_tokens=settings.max_new_tokens,
            temperature=settings.temperature if settings.do_sample else 0.0,
            top_p=settings.top_p if settings.do_sample else 1.0,
            seed=settings.seed,
        )
        texts = [
            self.tokenizer.apply_chat_template(list(p.messages), tokenize=False, add_generation_prompt=True) + p.prefill
            for p in prompts
        ]
        lora = LoRARequest("adapter", 1, self.adapter) if self.adapter else None
        outputs = self.llm.generate(texts, params, lora_request=lora, use_tqdm=False)
        return [output.outputs[0].text for output in outputs]


class EndpointBackend:
    """An OpenAI-compatible ``/chat/completions`` endpoint as the model under test. A
    prefill is sent as a final assistant message with vLLM's ``continue_final_message``."""

    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY",
                 timeout: float = 120.0, retries: int = 3):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.timeout, self.retries = model, timeout, retries
        self.api_key = os.environ.get(api_key_env, "") if api_key_env else ""
        self.identity = f"endpoint:{base_url}:{model}"

    def _post(self, body: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers)
        last_error = None
        for attempt in range(self.retries + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                    return json.loads(reply.read())
            except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as error:
                last_error = error
                if attempt < self.retries:
                    time.sleep(min(2**attempt, 30))
        raise GenerationError(f"endpoint {self.url} failed after {self.retries + 1} tries: {last_error}")

    def generate(self, prompts: list, settings: GenerationSettings) -> list:
        texts = []
        for prompt in prompts:
            if prompt.embeds is not None:
                raise ConfigError("an endpoint cannot take input embeddings; use the hf backend for that attack")
            messages = [dict(m) for m in prompt.messages]
            body = {"model": self.model, "messages": messages, "max_tokens": settings.max_new_tokens,
                    "temperature": settings.temperature if settings.do_sample else 0.0, "seed": settings.seed}
            if settings.do_sample:
                body["top_p"] = settings.top_p
            if prompt.prefill:
                messages.append({"role": "assistant", "content": prompt.prefill})
                body.update(continue_final_message=True, add_generation_prompt=False)
            reply = self._post(body)
            try:
                texts.append(reply["choices"][0]["message"]["content"] or "")
            except (KeyError, IndexError, TypeError):
                raise GenerationError(f"endpoint {self.url} replied without a message: {str(reply)[:200]}") from None
        return texts


class GenerationCache:
    """An append-only JSONL file of finished generations; one line per prompt."""

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
        settings_key = {k: v for k, v in asdict(settings).items() if k != "batch_size"}
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

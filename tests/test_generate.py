"""The one generation path: batching, prefill, cache and resume, endpoint backend."""
from __future__ import annotations

import json
import sys
import types
from dataclasses import replace

import pytest

from repbend.types import AttackedPrompt, BehaviorRow
from repbend.generate import EndpointBackend, GenerationCache, GenerationError, GenerationSettings, HFBackend, generate
from conftest import QuietJSONHandler, local_server

QUESTIONS = ["hi", "what is the colour of the sky on a clear day?", "name a fruit", "count to five please, slowly"]


def prompts(texts=QUESTIONS, prefill=""):
    return [
        AttackedPrompt(BehaviorRow(id=str(i), prompt=t, benchmark="unit"), "direct", ({"role": "user", "content": t},), prefill)
        for i, t in enumerate(texts)
    ]


def test_a_local_folder_identity_follows_its_weights(tiny_llama, byte_tok, tmp_path):
    # Cached generations are keyed by identity: a folder rewritten in place (a new
    # task-arithmetic merge) must not reuse the old model's answers.
    import torch

    from repbend.config import ModelConfig

    folder = tmp_path / "merged"
    tiny_llama.save_pretrained(folder)
    byte_tok.save_pretrained(folder)
    config = ModelConfig(name_or_path=str(folder), tokenizer="byte")
    first = HFBackend.load(config).identity
    assert first == HFBackend.load(config).identity
    with torch.no_grad():
        next(tiny_llama.parameters()).add_(1.0)
    tiny_llama.save_pretrained(folder)
    assert HFBackend.load(config).identity != first


def test_a_merged_adapter_generates_what_the_peft_wrapper_does(tiny_llama, byte_tok, tmp_path):
    # Evaluation folds the LoRA weights in for speed; it must be the same model.
    from peft import LoraConfig, PeftModel, get_peft_model

    from repbend.config import ModelConfig

    tiny_llama.save_pretrained(tmp_path / "base")
    byte_tok.save_pretrained(tmp_path / "base")
    # init_lora_weights=False: a non-zero B, so the adapter changes what the model says
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(tiny_llama, lora).save_pretrained(tmp_path / "adapter")
    config = ModelConfig(name_or_path=str(tmp_path / "base"), tokenizer="byte")
    settings = GenerationSettings(max_new_tokens=12, batch_size=4)
    wrapped = HFBackend.load(config, str(tmp_path / "adapter"))
    merged = HFBackend.load(config, str(tmp_path / "adapter"), merge=True)
    assert isinstance(wrapped.model, PeftModel) and not isinstance(merged.model, PeftModel)
    assert merged.identity != wrapped.identity  # merging rounds differently: its own cache entries
    assert merged.generate(prompts(), settings) == wrapped.generate(prompts(), settings)
    assert merged.generate(prompts(), settings) != HFBackend.load(config).generate(prompts(), settings)


@pytest.fixture
def backend(tiny_llama, byte_tok):
    return HFBackend(tiny_llama, byte_tok, "hf:tiny")


def test_batched_generation_equals_one_by_one(backend):
    settings = GenerationSettings(max_new_tokens=12, batch_size=4)
    batched = backend.generate(prompts(), settings)
    one_by_one = [backend.generate([p], settings)[0] for p in prompts()]
    assert batched == one_by_one
    assert all(len(text) > 0 for text in batched)


def test_prefill_begins_the_assistant_turn(backend, monkeypatch):
    seen = []
    real = backend.model.generate

    def spy(**kwargs):
        seen.append(kwargs["input_ids"])
        return real(**kwargs)

    monkeypatch.setattr(backend.model, "generate", spy)
    backend.generate(prompts(["do the task"], prefill="Sure, here is the task:\n\n"), GenerationSettings(max_new_tokens=4))
    text = backend.tokenizer.decode(seen[0][0])
    assert text.endswith("<|im_start|>assistant\nSure, here is the task:\n\n")


def test_cache_resumes_without_regenerating(backend, tmp_path):
    settings = GenerationSettings(max_new_tokens=6, batch_size=2)
    path = tmp_path / "generations.jsonl"
    first, generated = generate(backend, prompts()[:2], settings, GenerationCache(path), progress=False)
    assert generated == 2
    # A later run (new process: the cache is read back from disk) only does what is missing.
    everything, generated = generate(backend, prompts(), settings, GenerationCache(path), progress=False)
    assert generated == 2 and everything[:2] == first
    again, generated = generate(backend, prompts(), settings, GenerationCache(path), progress=False)
    assert generated == 0 and again == everything
    # Different settings are different generations.
    _, generated = generate(backend, prompts(), GenerationSettings(max_new_tokens=7), GenerationCache(path), progress=False)
    assert generated == 4


def test_cache_survives_a_line_cut_by_a_kill(backend, tmp_path):
    settings = GenerationSettings(max_new_tokens=4)
    path = tmp_path / "generations.jsonl"
    generate(backend, prompts(), settings, GenerationCache(path), progress=False)
    path.write_text(path.read_text() + '{"key": "abc", "resp')
    _, generated = generate(backend, prompts(), settings, GenerationCache(path), progress=False)
    assert generated == 0


class ChatHandler(QuietJSONHandler):
    replies: list = []
    bodies: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append(body)
        status, payload = type(self).replies.pop(0) if type(self).replies else (200, {"choices": [{"message": {"content": "ok"}}]})
        self.reply_json(payload, status)


@pytest.fixture
def server():
    ChatHandler.replies, ChatHandler.bodies = [], []
    with local_server(ChatHandler) as base_url:
        yield base_url


def test_endpoint_backend_sends_messages_and_prefill(server):
    backend = EndpointBackend(server, "m", api_key_env=None, retries=0)
    texts = backend.generate(prompts(["a", "b"], prefill="Sure:"), GenerationSettings(max_new_tokens=5))
    assert texts == ["ok", "ok"]
    body = ChatHandler.bodies[0]
    assert body["messages"][-1] == {"role": "assistant", "content": "Sure:"} and body["continue_final_message"] is True
    assert body["max_tokens"] == 5 and body["temperature"] == 0.0


def test_endpoint_failure_is_an_error_naming_the_url(server):
    ChatHandler.replies = [(500, {"error": "boom"})] * 3
    backend = EndpointBackend(server, "m", api_key_env=None, retries=1, backoff_s=0)
    with pytest.raises(GenerationError, match="127.0.0.1"):
        backend.generate(prompts(["a"]), GenerationSettings(max_new_tokens=5))
    assert len(ChatHandler.bodies) == 2  # one try and one retry
    unreachable = EndpointBackend("http://127.0.0.1:9/v1", "m", api_key_env=None, retries=0)
    with pytest.raises(GenerationError, match="127.0.0.1:9"):
        unreachable.generate(prompts(["a"]), GenerationSettings(max_new_tokens=5))


@pytest.mark.parametrize("content", [None, ""])
def test_endpoint_empty_reply_is_an_error_not_a_refusal(server, content):
    ChatHandler.replies = [(200, {"choices": [{"message": {"content": content}}]})]
    backend = EndpointBackend(server, "served-model", api_key_env=None, retries=0)
    with pytest.raises(GenerationError, match=r"127\.0\.0\.1.*no text.*'served-model', row 0\)"):
        backend.generate(prompts(["a"]), GenerationSettings(max_new_tokens=5))


def test_endpoint_client_errors_fail_at_once_and_busy_answers_are_retried(server):
    ChatHandler.replies = [(400, {"error": "unknown model served-model"})]
    backend = EndpointBackend(server, "served-model", api_key_env=None, retries=3, backoff_s=0)
    with pytest.raises(GenerationError, match="HTTP 400 Bad Request: .*unknown model served-model"):
        backend.generate(prompts(["a"]), GenerationSettings(max_new_tokens=5))
    assert len(ChatHandler.bodies) == 1
    ChatHandler.replies = [(408, {}), (429, {}), (503, {})]
    assert backend.generate(prompts(["a"]), GenerationSettings(max_new_tokens=5)) == ["ok"]
    assert len(ChatHandler.bodies) == 5


def test_generate_batches_by_length_and_answers_in_order():
    class Echo:
        identity = "echo"
        batches = []

        def generate(self, batch, settings):
            self.batches.append([p.row.prompt for p in batch])
            return [p.row.prompt.upper() for p in batch]

    texts = ["a much longer question than the others", "hi", "medium question", "yo"]
    backend = Echo()
    responses, generated = generate(backend, prompts(texts), GenerationSettings(batch_size=2), progress=False)
    assert responses == [t.upper() for t in texts] and generated == 4
    assert backend.batches == [["hi", "yo"], ["medium question", "a much longer question than the others"]]


def test_each_row_stops_at_the_chat_templates_end_of_turn(tiny_llama, byte_tok, monkeypatch):
    # A tokenizer whose EOS is not the token ChatML closes turns with (as Qwen2 base models).
    import torch

    byte_tok.add_special_tokens({"eos_token": "<|endoftext|>"})
    end_of_turn, eos = byte_tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    tiny_llama.generation_config.eos_token_id = eos
    backend = HFBackend(tiny_llama, byte_tok, "hf:tiny")
    assert backend.stop_ids == sorted([end_of_turn, eos])
    seen = {}
    a, b, c = byte_tok.convert_tokens_to_ids(["a", "b", "c"])

    def scripted(**kwargs):  # row 0 ends its turn after "ab"; row 1 stops at EOS; both padded
        seen.update(kwargs)
        tail = torch.tensor([[a, b, end_of_turn, c, c], [c, eos, byte_tok.pad_token_id, a, a]])
        return torch.cat([kwargs["input_ids"], tail], dim=1)

    monkeypatch.setattr(tiny_llama, "generate", scripted)
    assert backend.generate(prompts(["x", "y"]), GenerationSettings(max_new_tokens=5)) == ["ab", "c"]
    assert seen["eos_token_id"] == backend.stop_ids


# --- the cache key: every setting that changes a generation ----------------------------


def identity(folder, **changes) -> str:
    from repbend.config import ModelConfig

    return HFBackend.load(ModelConfig(name_or_path=str(folder), **{"tokenizer": "byte", **changes})).identity


def test_backend_identity_follows_dtype_template_revision_tokenizer(tiny_model_folder):
    from repbend.models import CHATML_TEMPLATE

    first = identity(tiny_model_folder)
    assert identity(tiny_model_folder) == first  # nothing changed: the cached answers are reused
    changed = [
        identity(tiny_model_folder, dtype="bfloat16"),
        identity(tiny_model_folder, chat_template=CHATML_TEMPLATE.replace("\n", "\n\n")),
        identity(tiny_model_folder, revision="v2"),
        identity(tiny_model_folder, tokenizer=str(tiny_model_folder)),
        identity(tiny_model_folder, trust_remote_code=True),
    ]
    assert len({first, *changed}) == 1 + len(changed)


def test_weights_identity_follows_a_gguf_replaced_in_place(tmp_path):
    from repbend.config import ModelConfig
    from repbend.generate import weights_identity

    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF first weights")
    first = weights_identity(ModelConfig(name_or_path=str(gguf)))
    in_folder = weights_identity(ModelConfig(name_or_path=str(tmp_path), gguf_file="model.gguf"))
    gguf.write_bytes(b"GGUF other weights")
    assert weights_identity(ModelConfig(name_or_path=str(gguf))) != first
    assert weights_identity(ModelConfig(name_or_path=str(tmp_path), gguf_file="model.gguf")) != in_folder


def test_adapter_identity_is_its_weights_not_its_path(tiny_model_folder, tiny_llama, tmp_path):
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    from repbend.config import ModelConfig

    config = ModelConfig(name_or_path=str(tiny_model_folder), tokenizer="byte")
    adapter = tmp_path / "adapter"
    seen = []
    for seed in (0, 1):  # the same folder retrained in place
        torch.manual_seed(seed)
        lora = LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)
        get_peft_model(copy.deepcopy(tiny_llama), lora).save_pretrained(adapter)
        seen.append(HFBackend.load(config, str(adapter)).identity)
    assert seen[0] != seen[1] and HFBackend.load(config).identity not in seen


def test_a_token_budget_halves_long_batches_without_changing_answers(backend):
    shapes = []
    model_generate = backend.model.generate

    def recording(**inputs):
        shapes.append(tuple(inputs["input_ids"].shape))
        return model_generate(**inputs)

    backend.model.generate = recording
    unlimited = backend.generate(prompts(), GenerationSettings(max_new_tokens=8, batch_size=4))
    assert len(shapes) == 1
    rows, longest = shapes.pop()
    budget = rows * longest - 1
    budgeted = backend.generate(prompts(), GenerationSettings(max_new_tokens=8, batch_size=4, max_batch_tokens=budget))
    assert budgeted == unlimited
    assert len(shapes) > 1 and all(r * n <= budget or r == 1 for r, n in shapes)


def test_cache_key_holds_the_sampling_settings():
    (prompt,) = prompts(["a"])
    base = GenerationSettings()
    key = GenerationCache.key("id", prompt, base)
    for batching in (dict(batch_size=32), dict(max_batch_tokens=64)):  # greedy answers do not depend on it
        assert GenerationCache.key("id", prompt, GenerationSettings(**batching)) == key
        sampled = GenerationSettings(do_sample=True)  # seeded per batch: they do
        assert GenerationCache.key("id", prompt, replace(sampled, **batching)) != GenerationCache.key("id", prompt, sampled)
    for change in (dict(max_new_tokens=7), dict(do_sample=True), dict(temperature=0.5), dict(top_p=0.9), dict(seed=1)):
        assert GenerationCache.key("id", prompt, GenerationSettings(**change)) != key, change
    assert GenerationCache.key("other", prompt, base) != key


class _FakeVLLM:
    """A stand-in for vLLM (which needs a GPU): records what the engine and each call get."""

    engines: list = []
    calls: list = []

    class LLM:
        def __init__(self, **engine):
            _FakeVLLM.engines.append(engine)

        def generate(self, requests, params, lora_request=None, use_tqdm=True):
            _FakeVLLM.calls.append((requests, params, lora_request))
            return [types.SimpleNamespace(outputs=[types.SimpleNamespace(text="ok")]) for _ in requests]

    class SamplingParams(dict):
        def __init__(self, **settings):
            super().__init__(settings)


@pytest.fixture
def fake_vllm(monkeypatch):
    _FakeVLLM.engines, _FakeVLLM.calls = [], []
    lora = types.SimpleNamespace(LoRARequest=lambda *args: args)
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=_FakeVLLM.LLM, SamplingParams=_FakeVLLM.SamplingParams))
    monkeypatch.setitem(sys.modules, "vllm.lora", types.SimpleNamespace(request=lora))
    monkeypatch.setitem(sys.modules, "vllm.lora.request", lora)
    return _FakeVLLM


def test_vllm_backend_gets_the_model_settings_and_the_hf_prompt_tokens(tiny_model_folder, fake_vllm):
    from repbend.config import ModelConfig
    from repbend.generate import VLLMBackend
    from repbend.models import load_tokenizer

    config = ModelConfig(name_or_path=str(tiny_model_folder), dtype="bfloat16", revision="abc123", trust_remote_code=True)
    backend = VLLMBackend(config)
    assert fake_vllm.engines[-1] == {"model": str(tiny_model_folder), "revision": "abc123", "dtype": "bfloat16",
                                     "trust_remote_code": True, "enable_lora": False, "max_lora_rank": 64}
    (prompt,) = prompts(["hello"])
    assert backend.generate([prompt], GenerationSettings(max_new_tokens=5)) == ["ok"]
    (requests, params, _), = fake_vllm.calls
    tokenizer = load_tokenizer(config)
    text = tokenizer.apply_chat_template(list(prompt.messages), tokenize=False, add_generation_prompt=True)
    # The rendered template already holds its special tokens: none are added (no second BOS).
    assert requests == [{"prompt_token_ids": tokenizer(text, add_special_tokens=False)["input_ids"]}]
    assert params == {"max_tokens": 5, "temperature": 0.0, "top_p": 1.0, "seed": 0}

    same = VLLMBackend(config).identity
    assert same == backend.identity
    for change in (dict(dtype="float16"), dict(revision="def456"), dict(chat_template="{{ messages[0]['content'] }}")):
        other = ModelConfig(**{**vars(config), **change})
        assert VLLMBackend(other).identity != backend.identity, change

def test_vllm_backend_refuses_steering(tiny_model_folder, fake_vllm):
    import torch

    from repbend.config import ModelConfig
    from repbend.errors import ConfigError
    from repbend.generate import VLLMBackend
    from repbend.types import Steering

    (prompt,) = prompts(["hello"])
    steered = replace(prompt, steering=Steering(torch.ones(32), 1.0, (1,), "digest"))
    with pytest.raises(ConfigError, match="vllm backend cannot steer"):
        VLLMBackend(ModelConfig(name_or_path=str(tiny_model_folder))).generate([steered], GenerationSettings())
    assert fake_vllm.calls == []

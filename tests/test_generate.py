"""The one generation path: batching, prefill, cache and resume, endpoint backend."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from repbend.eval.types import AttackedPrompt, BehaviorRow
from repbend.generate import EndpointBackend, GenerationCache, GenerationError, GenerationSettings, HFBackend, generate

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
    assert merged.identity == wrapped.identity
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


class ChatHandler(BaseHTTPRequestHandler):
    replies: list = []
    bodies: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append(body)
        status, payload = type(self).replies.pop(0) if type(self).replies else (200, {"choices": [{"message": {"content": "ok"}}]})
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(payload).encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    ChatHandler.replies, ChatHandler.bodies = [], []
    httpd = HTTPServer(("127.0.0.1", 0), ChatHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}/v1"
    httpd.shutdown()


def test_endpoint_backend_sends_messages_and_prefill(server):
    backend = EndpointBackend(server, "m", api_key_env=None, retries=0)
    texts = backend.generate(prompts(["a", "b"], prefill="Sure:"), GenerationSettings(max_new_tokens=5))
    assert texts == ["ok", "ok"]
    body = ChatHandler.bodies[0]
    assert body["messages"][-1] == {"role": "assistant", "content": "Sure:"} and body["continue_final_message"] is True
    assert body["max_tokens"] == 5 and body["temperature"] == 0.0


def test_endpoint_failure_is_an_error_naming_the_url(server, monkeypatch):
    ChatHandler.replies = [(500, {"error": "boom"})] * 3
    backend = EndpointBackend(server, "m", api_key_env=None, retries=1)
    monkeypatch.setattr("repbend.generate.time.sleep", lambda seconds: None)
    with pytest.raises(GenerationError, match="127.0.0.1"):
        backend.generate(prompts(["a"]), GenerationSettings(max_new_tokens=5))
    assert len(ChatHandler.bodies) == 2  # one try and one retry
    unreachable = EndpointBackend("http://127.0.0.1:9/v1", "m", api_key_env=None, retries=0)
    with pytest.raises(GenerationError, match="127.0.0.1:9"):
        unreachable.generate(prompts(["a"]), GenerationSettings(max_new_tokens=5))

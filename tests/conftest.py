"""Shared fixtures: the built-in byte tokenizer and tiny random causal LMs (CPU, seconds).

Keep this file small and additive: several test modules rely on it.
"""
from __future__ import annotations

import hashlib
import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import torch

from repbend.data.benchmarks import normalise_text
from repbend.models import byte_tokenizer
import repbend.training as train_module
from repbend.training import train

# A tiny Llama shape (hidden 32, 4 blocks); the vocabulary comes from the tokenizer.
TINY_LLAMA = dict(
    model_type="llama",
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and lose much when the cores are
    busy (a module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def byte_tok():
    """A fresh byte-level tokenizer with the ChatML template (tests may modify it)."""
    return byte_tokenizer()


@pytest.fixture
def make_tiny_model():
    """Factory: ``make_tiny_model(vocab_size=300, seed=0, **config_overrides)`` builds a
    tiny random Llama (fp32, eval mode) with ``AutoModelForCausalLM.from_config``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    def build(vocab_size: int = 300, seed: int = 0, **overrides):
        settings = dict(TINY_LLAMA, vocab_size=vocab_size)
        settings.update(overrides)
        model_type = settings.pop("model_type")
        config = AutoConfig.for_model(model_type, **settings)
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config).float().eval()

    return build


@pytest.fixture
def tiny_llama(byte_tok, make_tiny_model):
    """A tiny random Llama whose vocabulary matches ``byte_tok``."""
    return make_tiny_model(
        vocab_size=len(byte_tok), pad_token_id=byte_tok.pad_token_id, eos_token_id=byte_tok.eos_token_id
    )


@pytest.fixture
def tiny_model_folder(tiny_llama, byte_tok, tmp_path):
    """``tiny_llama`` and ``byte_tok`` saved as a local model folder."""
    folder = tmp_path / "tiny-model"
    tiny_llama.save_pretrained(folder)
    byte_tok.save_pretrained(folder)
    return folder


class QuietJSONHandler(BaseHTTPRequestHandler):
    """A stand-in server's request handler: answers JSON, logs nothing."""

    def reply_json(self, payload, status: int = 200) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@contextmanager
def local_server(handler):
    """An HTTP server on a free local port answering with ``handler`` (a
    BaseHTTPRequestHandler class); yields its OpenAI-style base URL."""
    httpd = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()


# A small data build for the tiny model (tests of `repbend data` and `repbend run`).
SMALL = ["build.max_train_harmful=6", "build.max_heldout_harmful=10", "build.max_benign=20", "build.max_everyday=10",
         "build.max_retain_instructions=10",
         "build.max_new_tokens=8", "build.judge=keywords"]


def bag_of_words(texts: list, **_) -> torch.Tensor:
    """Unit vectors of hashed word counts: shared words make cosine high, like MiniLM."""
    vectors = torch.zeros(len(texts), 512)
    for i, text in enumerate(texts):
        for word in normalise_text(text).split():
            vectors[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % 512] += 1
    return torch.nn.functional.normalize(vectors, dim=-1)


def interrupted(config, monkeypatch, at_step: int) -> None:
    """Train ``config`` until a KeyboardInterrupt at ``at_step``: a run killed mid-way."""
    real_step = train_module._train_step

    def killed(step, *args, **kwargs):
        if step == at_step:
            raise KeyboardInterrupt
        return real_step(step, *args, **kwargs)

    monkeypatch.setattr(train_module, "_train_step", killed)
    with pytest.raises(KeyboardInterrupt):
        train(config, progress=False)
    monkeypatch.setattr(train_module, "_train_step", real_step)

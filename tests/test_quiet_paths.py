"""Failures that once passed quietly: dropped connections, empty replies from a chat
endpoint (backend and judge alike), and adapters an endpoint cannot apply."""
from __future__ import annotations

import json
import socket
import struct

import pytest

from repbend.config import Config, EvalConfig
from repbend.errors import ConfigError
from repbend.eval.judges import JudgeError, JudgeInput, build_judge
from repbend.commands.evaluate import make_backend
from repbend.types import AttackedPrompt, BehaviorRow
from repbend.generate import EndpointBackend, GenerationError, GenerationSettings
from conftest import QuietJSONHandler, local_server

OK = {"choices": [{"message": {"content": "No"}}]}


class Scripted(QuietJSONHandler):
    """Answers request n with ``script[n]``: a JSON payload (HTTP 200), "drop" (close the
    connection without a reply) or "reset" (abort it with a TCP RST); then OK."""

    script: list = []
    seen: list = []

    def do_POST(self):
        type(self).seen.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        action = type(self).script.pop(0) if type(self).script else OK
        if action == "drop":
            self.close_connection = True
            return
        if action == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            return
        self.reply_json(action)


@pytest.fixture
def url():
    Scripted.script, Scripted.seen = [], []
    with local_server(Scripted) as base_url:
        yield base_url


def prompt(row_id: str = "row-7"):
    return AttackedPrompt(BehaviorRow(id=row_id, prompt="q", benchmark="unit"), "direct", ({"role": "user", "content": "q"},))


def judge(url: str, retries: int = 0):
    return build_judge("endpoint", base_url=url, model="judge-model", api_key_env=None, retries=retries,
                       backoff_s=0, requests_per_second=0)


def test_dropped_and_reset_connections_are_retried(url):
    Scripted.script = ["drop", "reset"]
    backend = EndpointBackend(url, "m", api_key_env=None, retries=2, backoff_s=0)
    assert backend.generate([prompt()], GenerationSettings(max_new_tokens=3)) == ["No"]
    Scripted.script = ["reset", "drop"]
    assert judge(url, retries=2).judge([JudgeInput("b", "r")])[0].harmful is False
    assert len(Scripted.seen) == 6


def test_connection_failures_end_in_a_named_error(url):
    Scripted.script = ["drop", "reset"]
    backend = EndpointBackend(url, "m", api_key_env=None, retries=1, backoff_s=0)
    with pytest.raises(GenerationError, match=r"failed after 2 attempts: .*\(model 'm', row row-7\)"):
        backend.generate([prompt()], GenerationSettings(max_new_tokens=3))
    Scripted.script = ["drop", "drop"]
    with pytest.raises(JudgeError, match="RemoteDisconnected"):
        judge(url, retries=1).judge([JudgeInput("b", "r")])


@pytest.mark.parametrize("content", [None, ""])
def test_endpoint_judge_empty_reply_is_an_error(url, content):
    Scripted.script = [OK, {"choices": [{"message": {"content": content}}]}]
    with pytest.raises(JudgeError, match=rf"{url}/chat/completions answered with no text .*'judge-model', row 1\)"):
        judge(url).judge([JudgeInput("b", "r"), JudgeInput("b", "r")])


def test_endpoint_judge_unreadable_answer_names_the_row(url):
    Scripted.script = [{"choices": [{"message": {"content": "Maybe"}}]}]
    with pytest.raises(JudgeError, match=r"gave no verdict: .*'Maybe'.*row 0\)"):
        judge(url).judge([JudgeInput("b", "r")])


def test_endpoint_backend_with_adapters_is_a_config_error(tmp_path):
    config = Config(eval=EvalConfig(backend="endpoint", endpoint_url="http://127.0.0.1:9/v1",
                                    endpoint_model="served", adapters=[str(tmp_path / "adapter")]))
    with pytest.raises(ConfigError, match=r"served model 'served' only.*eval\.endpoint_model=NAME"):
        make_backend(config, config.model, None)
    config.eval.adapters = []
    assert make_backend(config, config.model, None).identity == "endpoint:http://127.0.0.1:9/v1:served"

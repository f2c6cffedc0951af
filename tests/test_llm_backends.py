"""The model back-ends without a real model: the remote client's protocol (streamed server-sent events, the
key, errors), the completion prompt for base models, model locating, the settings, and the service's preload."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from test_answer import ScriptedModel

from kb.embedding import HashEmbedder
from kb.errors import ConfigError, LanguageModelError, ModelMissingError
from kb.llm import ChatMessage
from kb.llm_local import completion_prompt
from kb.llm_remote import RemoteModel
from kb.models import llm_model_path
from kb.settings import load_settings
from kbapp.app import App

MESSAGES = [ChatMessage("system", "Be brief."), ChatMessage("user", "Passages: ...\n\nQuestion: Why?")]


def sse(*pieces: str) -> bytes:
    lines = [": keep-alive"]
    for p in pieces:
        lines.append("data: " + json.dumps({"choices": [{"delta": {"content": p}, "index": 0}]}))
    lines.append("data: " + json.dumps({"choices": [], "usage": {"completion_tokens": len(pieces)}}))
    lines.append("data: [DONE]")
    return ("\n\n".join(lines) + "\n\n").encode()


def test_remote_model_streams_server_sent_events_with_the_key() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=sse("Because", " it", " is."),
                              headers={"content-type": "text/event-stream"})

    model = RemoteModel(
        "http://llm.local/v1/", model="m", api_key=SecretStr("sk-1"), transport=httpx.MockTransport(handler)
    )
    assert list(model.stream(MESSAGES, max_tokens=9, stop=["\n\n"])) == ["Because", " it", " is."]
    body = json.loads(seen[0].content)
    assert str(seen[0].url) == "http://llm.local/v1/chat/completions"
    assert seen[0].headers["authorization"] == "Bearer sk-1"
    assert body == {"messages": [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "Passages: ...\n\nQuestion: Why?"}],
                    "max_tokens": 9, "temperature": 0.0, "stream": True, "model": "m", "stop": ["\n\n"]}
    assert model.count_tokens("x" * 30) == 10


def test_remote_model_errors_are_one_line() -> None:
    model = RemoteModel("http://llm.local/v1", transport=httpx.MockTransport(
        lambda r: httpx.Response(401, json={"error": {"message": "invalid api key"}})))
    with pytest.raises(LanguageModelError, match=r"answered 401: .*invalid api key"):
        list(model.stream(MESSAGES, max_tokens=4))

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    model = RemoteModel("http://llm.local/v1", transport=httpx.MockTransport(refuse))
    with pytest.raises(LanguageModelError, match=r"cannot reach the model server at http://llm\.local/v1"):
        list(model.stream(MESSAGES, max_tokens=4))


def test_completion_prompt_for_a_base_model() -> None:
    assert completion_prompt(MESSAGES) == "Be brief.\n\nPassages: ...\n\nQuestion: Why?\n\nAnswer:"


def test_locating_models(tmp_path: Path) -> None:
    gguf = tmp_path / "any.gguf"
    gguf.write_bytes(b"GGUF")
    assert llm_model_path(str(gguf), tmp_path) == gguf
    with pytest.raises(ModelMissingError, match=r"neither a packaged model .*SmolLM2-135M-Instruct"):
        llm_model_path("no-such-model", tmp_path)


def test_llm_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_LLM_KEY", "sk-secret")
    s = load_settings(data_dir=tmp_path, llm_url="http://127.0.0.1:8080/v1/", llm_api_key_env="MY_LLM_KEY")
    assert s.llm_url == "http://127.0.0.1:8080/v1"
    assert s.llm_api_key is not None and s.llm_api_key.get_secret_value() == "sk-secret"
    assert "sk-secret" not in s.model_dump_json() and "sk-secret" not in repr(s)
    with pytest.raises(ConfigError, match=r"KB_LLM_API_KEY_ENV.*NOT_SET_ANYWHERE"):
        load_settings(data_dir=tmp_path, llm_api_key_env="NOT_SET_ANYWHERE")
    with pytest.raises(ConfigError, match="llm_url"):
        load_settings(data_dir=tmp_path, llm_url="127.0.0.1:8080")


class Loading(ScriptedModel):
    def __init__(self) -> None:
        super().__init__("x")
        self.loaded = threading.Event()
        self.threads: list[str] = []

    def load(self) -> Any:
        self.threads.append(threading.current_thread().name)
        self.loaded.set()


def test_the_service_preloads_the_model_off_the_request_path(tmp_path: Path) -> None:
    model = Loading()
    app = App(load_settings(data_dir=tmp_path / "a", workers=0), embedder=HashEmbedder(), llm=model)
    try:
        app.warm_up()
        time.sleep(0.2)
        assert not model.loaded.is_set()  # a one-off command does not load it
        app.role = "service"
        app.warm_up()
        assert model.loaded.wait(5) and model.threads == ["kb-llm-load"]
        assert app.language_model() is model
    finally:
        app.close()

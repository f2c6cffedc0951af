"""`kb ask` through the composition root, the API's streaming endpoint, the service's client and the CLI, with
a scripted fake model (the real one runs in tests/test_llm_real.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from test_answer import ROLLO, ScriptedModel

from kb.embedding import HashEmbedder
from kb.errors import LanguageModelError
from kb.lock import try_lock
from kb.settings import load_settings
from kbapp.app import App
from kbapp.client import Client, ServiceError


def library(tmp_path: Path, model: Any, **overrides: Any) -> App:
    docs = tmp_path / "docs"
    docs.mkdir(exist_ok=True)
    (docs / "rollo.txt").write_text(ROLLO + "\n")
    (docs / "moon.txt").write_text("The Moon orbits the Earth once every 27.3 days.\n")
    overrides.setdefault("answer_min_similarity", -1.0)  # the hash embedder's similarities mean little
    app = App(load_settings(data_dir=tmp_path / "data", workers=0, **overrides), embedder=HashEmbedder(), llm=model)
    app.ingest([docs])
    return app


def test_app_answers_with_display_paths_and_settings(tmp_path: Path) -> None:
    model = ScriptedModel("Rollo signed a treaty with Charles III in 911 [1].")
    app = library(tmp_path, model, llm_max_tokens=77, answer_passages=2)
    try:
        events = list(app.ask_stream("Who signed the treaty of 911?"))
        assert events[0]["event"] == "passages" and events[-1]["event"] == "answer"
        final = events[-1]["answer"]
        assert model.max_tokens == [77] and len(final["passages"]) <= 2
        rollo = next(p for p in final["passages"] if p["path"].endswith("rollo.txt"))
        assert not rollo["path"].startswith("file://") and rollo["text"].startswith("Rollo")
        assert final["status"] in ("answered", "unsupported")
        if rollo["n"] == 1:
            assert final["cited"] == [1]
        assert app.ask("Who signed the treaty of 911?")["question"] == "Who signed the treaty of 911?"
    finally:
        app.close()


def test_not_in_library_with_the_calibrated_threshold(tmp_path: Path) -> None:
    model = ScriptedModel("Invented [1].")
    app = library(tmp_path, model, answer_min_similarity=0.99)
    try:
        final = app.ask("What is the airspeed of an unladen swallow?")
        assert final["status"] == "not_in_library" and model.calls == []
    finally:
        app.close()


def test_api_streams_json_lines_and_the_client_reads_them(tmp_path: Path) -> None:
    from kbapp.service import Owner

    model = ScriptedModel("Rollo signed a treaty with Charles III in 911 [1].")
    app = library(tmp_path, model)
    lock = try_lock(app.settings.data_dir)
    assert lock is not None
    owner = Owner(app, lock, serve=True, recover=False)
    try:
        client = Client.connect(app.settings.socket_path)
        assert client is not None
        events = list(client.ask_stream("Who signed the treaty of 911?", k=3))
        client.close()
        kinds = [e["event"] for e in events]
        assert kinds[0] == "passages" and kinds[-1] == "answer" and kinds.count("token") == len(model.reply.split())
        assert "".join(e["text"] for e in events if e["event"] == "token") == model.reply
    finally:
        owner.close()
        app.close()


class BrokenModel(ScriptedModel):
    def stream(self, *args: Any, **kwargs: Any) -> Any:
        raise LanguageModelError("cannot reach the model server at http://127.0.0.1:9: refused")


def test_a_model_failure_reaches_the_client_as_one_error(tmp_path: Path) -> None:
    from litestar.testing import TestClient

    from server.api import create_api

    app = library(tmp_path, BrokenModel("x"))
    try:
        with TestClient(app=create_api(app)) as http:
            r = http.post("/api/v1/ask", json={"question": "Who was Rollo?"})
            lines = [json.loads(x) for x in r.text.splitlines()]
        assert lines[-1] == {"event": "error", "error": {
            "type": "LanguageModelError", "message": "cannot reach the model server at http://127.0.0.1:9: refused"}}
    finally:
        app.close()
    with pytest.raises(ServiceError):
        raise ServiceError(lines[-1]["error"]["message"])


def test_cli_ask_streams_then_prints_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kbapp import cli

    model = ScriptedModel("Rollo signed a treaty with Charles III in 911 [1][5].")
    library(tmp_path, model).close()
    monkeypatch.setattr(App, "language_model", lambda self: model)
    monkeypatch.setattr("kbapp.app.SentenceTransformerEmbedder", lambda *a, **k: HashEmbedder())
    monkeypatch.setenv("KB_ANSWER_MIN_SIMILARITY", "-1")
    monkeypatch.setenv("KB_WORKERS", "0")
    runner = CliRunner()
    r = runner.invoke(cli.main, ["--data-dir", str(tmp_path / "data"), "ask", "Who", "signed", "the", "treaty?"])
    assert r.exit_code == 0, r.output
    assert r.output.startswith(model.reply + "\n")
    assert "citation [5] dropped: no such passage was given" in r.output
    r = runner.invoke(cli.main, ["--data-dir", str(tmp_path / "data"), "ask", "--json", "Who signed the treaty?"])
    out = json.loads(r.output)
    assert out["raw"] == model.reply and out["passages"] and all(p["path"] for p in out["passages"])
    monkeypatch.setattr(App, "language_model", lambda self: BrokenModel("x"))
    r = runner.invoke(cli.main, ["--data-dir", str(tmp_path / "data"), "ask", "Who signed the treaty?"])
    assert r.exit_code == 2 and "kb: error: cannot reach the model server" in r.output
    assert "Traceback" not in r.output


def test_cli_says_which_citations_were_dropped_and_which_re_pointed(capsys: pytest.CaptureFixture[str]) -> None:
    from test_answer import MOON, hit, searcher

    from kbapp import cli
    from retrieval.answer import answer, to_json

    model = ScriptedModel("Rollo signed a treaty with Charles III in 911 [1].")
    result = answer("Who was Rollo?", searcher(hit(1, MOON), hit(2, ROLLO)), model)
    cli._print_answer(to_json({"event": "answer", "answer": result})["answer"], streamed=True)
    out = capsys.readouterr().out
    assert "checked: Rollo signed a treaty with Charles III in 911 [2]." in out
    assert "citation [1] dropped: the passage does not support the sentence" in out
    assert "citation [2] added: that passage holds the sentence" in out
    assert "sources:\n  [2] doc 2" in out

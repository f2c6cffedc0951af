"""A model behind an OpenAI-compatible server (llama.cpp server, Ollama, vLLM): /v1/chat/completions, streamed.

The server has its own tokenizer, which this side cannot see: token counts are estimated generously
(a token per three characters) so the prompt built from them fits the window the settings declare.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
from pydantic import SecretStr

from kb.errors import LanguageModelError
from kb.llm import ChatMessage

CHARS_PER_TOKEN = 3.0  # English runs ~4 per token in BPE vocabularies; 3 keeps a margin for other text


class RemoteModel:
    """Implements kb.llm.LanguageModel by streaming from an OpenAI-compatible /chat/completions endpoint."""

    def __init__(
        self, url: str, *, model: str | None = None, api_key: SecretStr | None = None, context_tokens: int = 2048,
        timeout_s: float = 300.0, transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.model = model
        self.name = model or self.url
        self.context_tokens = context_tokens
        headers = {"Authorization": f"Bearer {api_key.get_secret_value()}"} if api_key is not None else {}
        self._http = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout_s, connect=10.0), transport=transport)

    def count_tokens(self, text: str) -> int:
        return math.ceil(len(text) / CHARS_PER_TOKEN)

    def load(self) -> None:
        """Nothing to load here: the server holds the model."""

    def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float = 0.0,
        stop: Sequence[str] = (),
    ) -> Iterator[str]:
        body: dict[str, Any] = {
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "max_tokens": max_tokens, "temperature": temperature, "stream": True,
        }
        if self.model:
            body["model"] = self.model
        if stop:
            body["stop"] = list(stop)
        try:
            with self._http.stream("POST", f"{self.url}/chat/completions", json=body) as r:
                if r.status_code >= 400:
                    r.read()
                    raise LanguageModelError(f"the model server at {self.url} answered {r.status_code}: {r.text[:300]}")
                for line in r.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    try:
                        choice = json.loads(data)["choices"][0]
                    except (ValueError, KeyError, IndexError, TypeError):
                        continue  # keep-alive comments and usage-only chunks
                    piece = (choice.get("delta") or {}).get("content") or choice.get("text")
                    if piece:
                        yield piece
        except httpx.HTTPError as exc:
            raise LanguageModelError(f"cannot reach the model server at {self.url}: {exc}") from None

    def close(self) -> None:
        self._http.close()

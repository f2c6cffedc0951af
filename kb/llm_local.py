"""A GGUF model run in this process by llama-cpp-python (the default: SmolLM2-135M-Instruct).

The model file's own metadata says how to prompt it: a file with a chat template
(`tokenizer.chat_template`, e.g. ChatML) gets a chat completion rendered by that template; a base model
without one (Gemma 3 270M) gets a plain completion-style prompt. The weights load on first use, once per
process; llama.cpp is not thread-safe, so one generation runs at a time.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from kb.errors import LanguageModelError, ModelMissingError
from kb.llm import ChatMessage

# How a base model (no chat template) sees a conversation: the instructions, the material, then a cue.
COMPLETION_CUE = "\n\nAnswer:"


def completion_prompt(messages: Sequence[ChatMessage]) -> str:
    """A completion-style prompt for a base model: every message's text in order, then an answer cue."""
    parts = []
    for m in messages:
        text = m.content.strip()
        parts.append(text if m.role != "assistant" else f"Answer: {text}")
    return "\n\n".join(parts) + COMPLETION_CUE


class LocalModel:
    """Implements kb.llm.LanguageModel over a GGUF file (loaded lazily, once)."""

    def __init__(self, model_path: Path, *, context_tokens: int = 2048, threads: int = 2, name: str | None = None):
        self.model_path = model_path
        self.context_tokens = context_tokens
        self.threads = threads
        self.name = name or model_path.stem
        self._llama: Any = None
        self._load_lock = threading.Lock()
        self._run_lock = threading.Lock()

    def load(self) -> Any:
        """The llama.cpp model, loaded on first call (the service calls it at start, off the request path)."""
        with self._load_lock:
            if self._llama is None:
                try:
                    from llama_cpp import Llama
                except ImportError:
                    raise ModelMissingError(
                        "package 'llama-cpp-python' is not installed: run scripts/install.sh "
                        "(it builds and caches the wheel)"
                    ) from None
                try:
                    self._llama = Llama(
                        model_path=str(self.model_path), n_ctx=self.context_tokens, n_threads=self.threads,
                        verbose=False,
                    )
                except (ValueError, RuntimeError, OSError) as exc:
                    raise LanguageModelError(f"cannot load the model {self.model_path}: {exc}") from None
            return self._llama

    @property
    def chat_template(self) -> str | None:
        """The chat template stored in the GGUF file, or None for a base model."""
        template = self.load().metadata.get("tokenizer.chat_template")
        return str(template) if template else None

    def count_tokens(self, text: str) -> int:
        if not text:
            return 0
        return len(self.load().tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float = 0.0,
        stop: Sequence[str] = (),
    ) -> Iterator[str]:
        llama = self.load()
        with self._run_lock:
            try:
                if self.chat_template:
                    chunks = llama.create_chat_completion(
                        messages=[{"role": m.role, "content": m.content} for m in messages],
                        max_tokens=max_tokens, temperature=temperature, stop=list(stop) or None, stream=True,
                    )
                    for chunk in chunks:
                        piece = chunk["choices"][0].get("delta", {}).get("content")
                        if piece:
                            yield piece
                else:
                    pieces = llama.create_completion(
                        completion_prompt(messages), max_tokens=max_tokens, temperature=temperature,
                        stop=[*stop, "\n\nQuestion:", "\n\n\n"], stream=True,
                    )
                    for chunk in pieces:
                        piece = chunk["choices"][0].get("text")
                        if piece:
                            yield piece
            except ValueError as exc:  # e.g. the prompt does not fit the window
                raise LanguageModelError(f"the model refused the request: {exc}") from None

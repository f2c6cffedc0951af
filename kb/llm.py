"""The language-model seam: what answers and summaries need from a model, whatever runs it.

Implementations (a local GGUF file through llama-cpp-python, an OpenAI-compatible server) live beside this
protocol and are chosen by the composition root from the settings; tests use scripted fakes. Nothing here
loads a model at import time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ChatMessage:
    role: str  # system | user | assistant
    content: str


class LanguageModel(Protocol):
    """Generates text for a conversation, token by token, within the model's context window."""

    name: str
    context_tokens: int  # the window: prompt plus generated tokens

    def count_tokens(self, text: str) -> int:
        """Tokens `text` takes in this model (for fitting passages into the context budget)."""
        ...

    def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float = 0.0,
        stop: Sequence[str] = (),
    ) -> Iterator[str]:
        """The reply as text pieces as they are generated (a base model gets a completion-style prompt)."""
        ...

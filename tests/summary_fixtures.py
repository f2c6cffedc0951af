"""Meeting transcripts as chunk records (no Whisper needed) and a scripted language model for summary tests."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence

from kb.catalog import ChunkRecord
from kb.llm import ChatMessage

MEETING = [
    "Welcome everyone to the planning meeting for the community garden project.",
    "The garden budget for next year is twelve thousand pounds.",
    "We decided to replace the greenhouse roof in the spring.",
    "Maria will book the conference room by Friday.",
    "Who is going to pay for the new compost bins?",
    "The roof repairs cost more than expected last year because of the storm damage.",
    "Okay, sounds good.",
    "John to send the minutes to the committee.",
    "We agreed that the garden budget stays at twelve thousand pounds.",
    "The compost bins are full and the garden needs new bins soon.",
    "Volunteers water the tomato beds every morning during the summer heat.",
    "Priya will order the seeds before 2025-03-01.",
]


def transcript_chunks(sentences: Sequence[str], per_chunk: int = 2, seconds: float = 10.0) -> list[ChunkRecord]:
    """Chunks of `per_chunk` Whisper segments each (joined by blank lines, as the chunker does), each segment
    `seconds` long."""
    out = []
    for i in range(0, len(sentences), per_chunk):
        part = list(sentences[i : i + per_chunk])
        out.append(ChunkRecord(
            id=f"chunk-{i // per_chunk:05d}", doc_id=1, seq=i // per_chunk, text="\n\n".join(part),
            t_start=i * seconds, t_end=(i + len(part)) * seconds,
        ))
    return out


EXCERPT = re.compile(r"^\[(\d+)\](?: \(([\d:]+)\))? (.*)$")


def excerpts(prompt: str) -> list[tuple[int, str]]:
    """The numbered excerpts of a summary prompt: (number, text)."""
    return [(int(m.group(1)), m.group(3)) for m in (EXCERPT.match(ln) for ln in prompt.splitlines()) if m]


def echo(prompt: str) -> str:
    """A faithful condenser: every excerpt without its first word, citing it."""
    return "\n".join(f"- [{n}] {' '.join(text.split()[1:])}" for n, text in excerpts(prompt))


class ScriptedModel:
    """A LanguageModel whose replies a test writes; a token is a word; it records every prompt."""

    def __init__(self, reply: Callable[[str], str] = echo, context_tokens: int = 2048, name: str = "scripted") -> None:
        self.reply = reply
        self.context_tokens = context_tokens
        self.name = name
        self.prompts: list[str] = []
        self.calls: list[tuple[list[ChatMessage], int]] = []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float = 0.0,
        stop: Sequence[str] = (),
    ) -> Iterator[str]:
        self.calls.append((list(messages), max_tokens))
        self.prompts.append(messages[-1].content)
        text = self.reply(messages[-1].content)
        yield from re.split(r"(\s+)", text)  # streamed in pieces, as a real model does

"""Text embedders: the real sentence-transformers model (loaded on first use) and a deterministic fake."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from kb.models import embedding_model_path


class Embedder(Protocol):
    """What ingest and retrieval need from an embedding model."""

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    @property
    def max_tokens(self) -> int:
        """Word pieces the model reads before it truncates (special tokens excluded)."""
        ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text."""
        ...


class Tokenizer:
    """Just the model's tokenizer: cheap to load in parser processes that size chunks."""

    def __init__(self, model_dir: Path) -> None:
        from tokenizers import Tokenizer as HfTokenizer

        self._tok = HfTokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tok.no_truncation()
        self._tok.no_padding()

    def count(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        encs = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [len(e.ids) for e in encs]


class SentenceTransformerEmbedder:
    """all-MiniLM-L6-v2 (or another local sentence-transformers model) on the CPU."""

    def __init__(self, model: str, *, batch_size: int = 32, threads: int = 0) -> None:
        self._model_name = model
        self._dir = embedding_model_path(model)  # fails fast, before any work, if the package is missing
        self._batch_size = batch_size
        self._threads = threads
        self._model: Any = None
        self._tokenizer: Tokenizer | None = None
        self._lock = threading.Lock()
        self._query_lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._model_name

    @property
    def model_dir(self) -> Path:
        return self._dir

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                import torch
                from sentence_transformers import SentenceTransformer

                if self._threads:
                    torch.set_num_threads(self._threads)
                self._model = SentenceTransformer(str(self._dir), device="cpu", local_files_only=True)
            return self._model

    def _config(self, name: str, key: str) -> int | None:
        """Read a number from the model's config files, so callers need not load the weights for it."""
        import json

        try:
            return int(json.loads((self._dir / name).read_text())[key])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @property
    def dim(self) -> int:
        dim = self._config("1_Pooling/config.json", "word_embedding_dimension")
        if dim is None:
            model = self._load()
            getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
            dim = int(getter())
        return dim

    @property
    def max_tokens(self) -> int:
        seq = self._config("sentence_bert_config.json", "max_seq_length")
        if seq is None:
            seq = int(self._load().max_seq_length)
        return seq - 2  # [CLS] and [SEP]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        if self._tokenizer is None:
            self._tokenizer = Tokenizer(self._dir)
        return self._tokenizer.count(texts)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        model = self._load()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = model.encode(
            list(texts), batch_size=self._batch_size, normalize_embeddings=True,
            convert_to_numpy=True, show_progress_bar=False,
        )
        return np.asarray(vecs, dtype=np.float32)


    def embed_query(self, text: str) -> np.ndarray:
        """One query's vector, computed on one thread: a short text gains nothing from more, and under load
        (ingest embedding on every core) two threads gave a p95 of 548 ms against 23 ms for one.

        torch's thread count is per process, so it is lowered only for this call and put back after; a
        slice of ingest embedding that starts meanwhile runs on one thread for those few milliseconds.
        """
        model = self._load()
        import torch

        with self._query_lock:
            before = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                vec = model.encode(
                    [text], batch_size=1, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
                )
            finally:
                torch.set_num_threads(before)
        return np.asarray(vec, dtype=np.float32)[0]


class HashEmbedder:
    """Deterministic bag-of-words embedder for fast unit tests: similar words give similar vectors."""

    def __init__(self, dim: int = 64, max_tokens: int = 254, name: str = "hash-test") -> None:
        self._dim = dim
        self._max = max_tokens
        self._name = name
        self.calls = 0
        self.embedded = 0

    @property
    def name(self) -> str:
        return self._name

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def max_tokens(self) -> int:
        return self._max

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) for t in texts]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        self.embedded += len(texts)
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                h = int.from_bytes(hashlib.blake2b(w.encode(), digest_size=4).digest(), "little")
                out[i, h % self._dim] += 1.0
            n = np.linalg.norm(out[i])
            out[i] = out[i] / n if n else np.eye(1, self._dim, 0, dtype=np.float32)
        return out

"""The Chroma vector index: chunk embeddings with filterable metadata, ids equal to catalog chunk ids."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from kb.errors import IndexMismatchError, KbError

log = logging.getLogger(__name__)

MAX_BATCH = 5000  # Chroma refuses more than ~5,400 records per call


class VectorIndexError(KbError):
    """The vector store failed or cannot be reached."""


Metadata = dict[str, str | int | float | bool]


class VectorStore:
    """A Chroma client, embedded (PersistentClient) or remote (HttpClient): one code path for both."""

    def __init__(self, client: Any, where: str) -> None:
        self._client = client
        self.where = where

    @classmethod
    def open(cls, *, path: Path, url: str | None) -> VectorStore:
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        chroma_settings = ChromaSettings(anonymized_telemetry=False, allow_reset=False)
        try:
            if url:
                u = urlparse(url)
                client = chromadb.HttpClient(
                    host=u.hostname or "127.0.0.1", port=u.port or 8000, ssl=u.scheme == "https",
                    settings=chroma_settings,
                )
            else:
                path.mkdir(parents=True, exist_ok=True)
                client = chromadb.PersistentClient(path=str(path), settings=chroma_settings)
        except Exception as exc:
            raise VectorIndexError(f"cannot open the Chroma store at {url or path}: {exc}") from exc
        return cls(client, url or str(path))

    def collection(self, name: str, model_name: str, dim: int) -> VectorIndex:
        """Open (or create) a collection of chunk vectors built with `model_name`."""
        try:
            col = self._client.get_or_create_collection(
                name,
                configuration={"hnsw": {"space": "cosine"}},
                metadata={"embed_model": model_name, "embed_dim": dim},
                embedding_function=None,
            )
        except Exception as exc:
            raise VectorIndexError(f"cannot open collection {name} in the Chroma store at {self.where}: {exc}") from exc
        return VectorIndex(col, name, model_name, dim)

    def names(self) -> list[str]:
        try:
            return [c if isinstance(c, str) else c.name for c in self._client.list_collections()]
        except Exception as exc:
            raise VectorIndexError(f"cannot list collections in the Chroma store at {self.where}: {exc}") from exc

    def drop(self, name: str) -> None:
        try:
            self._client.delete_collection(name)
        except Exception as exc:  # absent collection: nothing to drop
            log.debug("delete_collection %s: %s", name, exc)


class VectorIndex:
    """One Chroma collection of chunk vectors; ids equal catalog chunk ids."""

    def __init__(self, col: Any, name: str, model_name: str, dim: int) -> None:
        self._col = col
        self.name = name
        self.model_name = model_name
        self.dim = dim
        meta = col.metadata or {}
        self.built_with = str(meta.get("embed_model"))
        self.built_dim = int(meta.get("embed_dim", dim))

    def check_model(self) -> None:
        """Refuse to mix vectors of two models in one collection."""
        if self.built_with != self.model_name or self.built_dim != self.dim:
            raise IndexMismatchError(
                f"the vector index was built with embedding model '{self.built_with}' "
                f"({self.built_dim} dimensions) but the settings ask for '{self.model_name}' "
                f"({self.dim}); run `kb reindex` to rebuild it"
            )

    def upsert(self, ids: Sequence[str], vectors: np.ndarray, metadatas: Sequence[Metadata]) -> None:
        for i in range(0, len(ids), MAX_BATCH):
            self._col.upsert(
                ids=list(ids[i : i + MAX_BATCH]),
                embeddings=vectors[i : i + MAX_BATCH],
                metadatas=list(metadatas[i : i + MAX_BATCH]),
            )

    def delete_ids(self, ids: Iterable[str]) -> None:
        ids = list(ids)
        for i in range(0, len(ids), MAX_BATCH):
            self._col.delete(ids=ids[i : i + MAX_BATCH])

    def delete_document(self, doc_id: int) -> None:
        self._col.delete(where={"doc_id": doc_id})

    def existing(self, ids: Sequence[str]) -> set[str]:
        """Which of these ids have a vector (to resume a document or a rebuild where it stopped)."""
        out: set[str] = set()
        for i in range(0, len(ids), MAX_BATCH):
            out.update(self._col.get(ids=list(ids[i : i + MAX_BATCH]), include=[])["ids"])
        return out

    def update_metadata(self, ids: Sequence[str], metadatas: Sequence[Metadata]) -> None:
        for i in range(0, len(ids), MAX_BATCH):
            self._col.update(ids=list(ids[i : i + MAX_BATCH]), metadatas=list(metadatas[i : i + MAX_BATCH]))

    def metadata(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        got = self._col.get(ids=list(ids), include=["metadatas"])
        return {i: dict(m or {}) for i, m in zip(got["ids"], got["metadatas"] or [], strict=False)}

    def all_ids(self) -> set[str]:
        out: set[str] = set()
        offset = 0
        while True:
            got = self._col.get(include=[], limit=MAX_BATCH, offset=offset)
            if not got["ids"]:
                return out
            out.update(got["ids"])
            offset += len(got["ids"])

    def count(self) -> int:
        return int(self._col.count())

    def query(
        self, vector: np.ndarray, k: int, where: dict[str, Any] | None = None
    ) -> list[tuple[str, float]]:
        """Nearest chunks as (id, cosine similarity).

        No count() first: Chroma returns fewer than k (or none) by itself, and counting 100,000 vectors cost
        more than the query (~10 ms of a 50 ms search)."""
        res = self._col.query(
            query_embeddings=[vector], n_results=max(1, k), where=where or None, include=["distances"]
        )
        return [(cid, 1.0 - float(d)) for cid, d in zip(res["ids"][0], res["distances"][0], strict=True)]

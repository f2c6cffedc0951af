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

COLLECTION = "kb_chunks"
MAX_BATCH = 5000  # Chroma refuses more than ~5,400 records per call


class VectorIndexError(KbError):
    """The vector store failed or cannot be reached."""


Metadata = dict[str, str | int | float | bool]


class VectorIndex:
    """Chroma, embedded (PersistentClient) or remote (HttpClient): one code path for both."""

    def __init__(self, client: Any, model_name: str, dim: int, *, rebuild: bool = False) -> None:
        self._client = client
        self.model_name = model_name
        self.dim = dim
        if rebuild:
            self._drop()
        self._col = self._open_collection()

    @classmethod
    def open(
        cls, *, path: Path, url: str | None, model_name: str, dim: int, rebuild: bool = False
    ) -> VectorIndex:
        """Open (or create) the chunk collection; with rebuild, start from an empty one."""
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
            where = url or str(path)
            raise VectorIndexError(f"cannot open the Chroma store at {where}: {exc}") from exc
        return cls(client, model_name, dim, rebuild=rebuild)

    def _open_collection(self) -> Any:
        col = self._client.get_or_create_collection(
            COLLECTION,
            configuration={"hnsw": {"space": "cosine"}},
            metadata={"embed_model": self.model_name, "embed_dim": self.dim},
            embedding_function=None,
        )
        meta = col.metadata or {}
        if meta.get("embed_model") != self.model_name or int(meta.get("embed_dim", self.dim)) != self.dim:
            raise IndexMismatchError(
                f"the vector index was built with embedding model '{meta.get('embed_model')}' "
                f"({meta.get('embed_dim')} dimensions) but the settings ask for '{self.model_name}' "
                f"({self.dim}); run `kb reindex` to rebuild it"
            )
        return col

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

    def update_metadata(self, ids: Sequence[str], metadatas: Sequence[Metadata]) -> None:
        for i in range(0, len(ids), MAX_BATCH):
            self._col.update(ids=list(ids[i : i + MAX_BATCH]), metadatas=list(metadatas[i : i + MAX_BATCH]))

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
        """Nearest chunks as (id, cosine similarity)."""
        n = self.count()
        if n == 0:
            return []
        res = self._col.query(
            query_embeddings=[vector], n_results=min(k, n), where=where or None, include=["distances"]
        )
        return [(cid, 1.0 - float(d)) for cid, d in zip(res["ids"][0], res["distances"][0], strict=True)]

    def _drop(self) -> None:
        try:
            self._client.delete_collection(COLLECTION)
        except Exception as exc:  # absent collection: nothing to drop
            log.debug("delete_collection: %s", exc)

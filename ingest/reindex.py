"""Rebuilding the vectors into a new collection, swapped in only when complete.

Search keeps using the current collection meanwhile. The new collection's name is recorded before any
work, so a rebuild killed halfway resumes where it stopped (only missing vectors are embedded); the swap
is one catalog transaction, after a final catch-up under the store's write lock so documents added or
removed during the rebuild are in it exactly. Collection names carry the instance id, so two instances on
one Chroma server never touch each other's vectors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ingest.chunking import embed_text
from ingest.store import Store, chunk_metadata
from kb.catalog import Catalog, ChunkRecord
from kb.embedding import Embedder
from kb.index import VectorIndex, VectorStore
from kb.jobs import Defer, Done, JobResult

log = logging.getLogger(__name__)

BATCH = 512


def instance_prefix(catalog: Catalog) -> str:
    return f"kb_{catalog.get_meta('instance_id')}_"


def next_collection_name(catalog: Catalog) -> str:
    current = catalog.get_meta("collection") or ""
    prefix = instance_prefix(catalog)
    gen = int(current.rsplit("_", 1)[1]) if current.startswith(prefix) and current.rsplit("_", 1)[1].isdigit() else 0
    return f"{prefix}{gen + 1}"


class ReindexHandler:
    """`reindex`: embed every chunk with the configured model into a new collection, then swap."""

    def __init__(
        self, catalog: Catalog, vectors: Callable[[], VectorStore], embedder: Embedder, store: Store,
        on_swap: Callable[[VectorIndex], None],
    ) -> None:
        self.catalog = catalog
        self._vectors = vectors
        self.embedder = embedder
        self.store = store
        self.on_swap = on_swap

    def __call__(self, job: Any, ctx: Any) -> JobResult:
        target = self.catalog.get_meta("reindex_target")
        if target is None:
            target = next_collection_name(self.catalog)
            self.catalog.set_meta("reindex_target", target)
        vectors = self._vectors()
        new = vectors.collection(target, self.embedder.name, self.embedder.dim)
        new.check_model()  # a half-built target from another model: refuse to mix
        total = self.catalog.chunk_count()
        done = 0
        for batch in self.catalog.iter_chunk_batches(BATCH):
            if ctx.stopping():
                return Defer(0.0, "interrupted by a stop; resumes where it stopped")
            self._fill(new, batch)
            done += len(batch)
            ctx.progress("re-embedding", done, total)
        with self.store.write_lock:  # nothing writes vectors while we catch up and swap
            live = self.catalog.all_chunk_ids()
            have = new.all_ids()
            extra = have - live
            if extra:
                new.delete_ids(extra)
            missing = sorted(live - have)
            if missing:
                by_id = self.catalog.chunks_by_id(missing)
                self._fill(new, list(by_id.values()))
            old = self.catalog.get_meta("collection")
            with self.catalog.transaction() as db:
                for key, value in (
                    ("collection", target), ("embed_model", self.embedder.name), ("embed_dim", str(self.embedder.dim)),
                ):
                    db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))
                db.execute("DELETE FROM meta WHERE key='reindex_target'")
            self.on_swap(new)
        if old and old != target:
            vectors.drop(old)
        log.info("reindex: %d chunks in %s (was %s)", len(live), target, old)
        return Done("reindexed")

    def _fill(self, new: VectorIndex, batch: list[ChunkRecord]) -> None:
        have = new.existing([c.id for c in batch])
        todo = [c for c in batch if c.id not in have]
        if not todo:
            return
        docs = self.catalog.documents({c.doc_id for c in todo})
        todo = [c for c in todo if c.doc_id in docs]
        vecs = self.embedder.embed([embed_text(c.text, c.section) for c in todo])
        new.upsert([c.id for c in todo], vecs, [chunk_metadata(docs[c.doc_id], c) for c in todo])


def drop_stale_collections(catalog: Catalog, vectors: VectorStore) -> list[str]:
    """Collections of this instance that are neither current nor being built (a crash after a swap)."""
    prefix = instance_prefix(catalog)
    keep = {catalog.get_meta("collection"), catalog.get_meta("reindex_target")}
    stale = [n for n in vectors.names() if n.startswith(prefix) and n not in keep]
    for n in stale:
        vectors.drop(n)
    return stale

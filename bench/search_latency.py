"""Search latency over an index of 100,000 chunks of real text, with and without a filter.

Usage: python bench/search_latency.py [BENCH_DIR] [--chunks 100000] [--queries 100] [--data-dir D]
BENCH_DIR defaults to ../shared/bench. The text is SciFact's abstracts cut into two-sentence chunks (10 per
document, a fifth of the documents typed pdf for the filter); the catalog rows and Chroma vectors are
written directly, not through the parsers. Embedding 100,000 chunks would take most of an hour on two
cores, so a sample of 2,000 is embedded for real and every other vector is a sampled one plus noise
(normalised): the index has the real size and dimension, and a realistic spread. The timed search is the
whole `Searcher.run` at k=10: query embedding (one thread), both sides, fusion, passages, facets. Wall time
is what a person waits; the process's CPU time per search is printed beside it (cpu_*), with the load
average, because on a shared machine the wall time mostly measures the other processes.
A --data-dir that already holds the index is reused. Prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ingest.store import chunk_metadata  # noqa: E402
from kb.catalog import ChunkRecord, Link, chunk_id  # noqa: E402
from kb.settings import load_settings  # noqa: E402
from kbapp.app import App  # noqa: E402
from retrieval.filters import Filters  # noqa: E402

PER_DOC = 10


def sentences(corpus: Path) -> list[str]:
    out: list[str] = []
    for line in corpus.open(encoding="utf-8"):
        d = json.loads(line)
        out.extend(s for s in re.split(r"(?<=[.!?])\s+", d["text"]) if len(s) > 20)
    return out


def build(app: App, corpus: Path, n_chunks: int) -> float:
    sents = sentences(corpus)
    texts = [f"{sents[i % len(sents)]} {sents[(i * 7 + 1) % len(sents)]}" for i in range(n_chunks)]
    rng = np.random.default_rng(7)
    sample = app.embedder.embed(texts[:2000])
    t0 = time.perf_counter()
    index = app.index()
    for start in range(0, n_chunks, PER_DOC * 100):
        ids, vecs, metas = [], [], []
        for d in range(start, min(n_chunks, start + PER_DOC * 100), PER_DOC):
            body = texts[d: d + PER_DOC]
            digest = hashlib.sha256(f"latency{d}".encode()).hexdigest()
            chunks, pos = [], 0
            for i, t in enumerate(body):
                chunks.append(ChunkRecord(chunk_id(digest, i), 0, i, t, char_start=pos, char_end=pos + len(t)))
                pos += len(t) + 2
            pdf = (d // PER_DOC) % 5 == 0
            doc_id = app.catalog.insert_document(
                content_hash=digest, kind="document", file_type="pdf" if pdf else "txt", title=f"doc {d}",
                author=None, created_at=None, modified_at="2024-01-01T00:00:00", size=pos, meta={},
                text="\n\n".join(body), chunks=chunks,
            )
            doc = app.catalog.document(doc_id)
            assert doc is not None
            uri = f"/bench/doc{d}.{'pdf' if pdf else 'txt'}"
            doc.paths, doc.tags, doc.source_types = [uri], [None], ["file"]
            for c in app.catalog.chunks_of(doc_id):
                ids.append(c.id)
                metas.append(chunk_metadata(doc, c))
                j = d + c.seq
                base = sample[j % len(sample)]
                v = base if j < len(sample) else base + rng.normal(0, 0.04, base.shape).astype(np.float32)
                vecs.append(v / np.linalg.norm(v))
            app.catalog.finish_document(doc_id, [Link(uri)], digest)
        index.upsert(ids, np.asarray(vecs, dtype=np.float32), metas)
    return time.perf_counter() - t0


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return round(s[min(len(s) - 1, int(len(s) * p))], 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bench", nargs="?", default=str(REPO.parent / "shared" / "bench"))
    ap.add_argument("--chunks", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--data-dir")
    a = ap.parse_args()
    sci = Path(a.bench) / "scifact"
    root = Path(a.data_dir) if a.data_dir else Path(tempfile.mkdtemp(prefix="kb-latency-"))
    app = App(load_settings(data_dir=root / "data"))
    app.recover()
    app.warm_up()
    result: dict[str, object] = {"chunks_wanted": a.chunks}
    if app.catalog.chunk_count() < a.chunks:
        result["build_s"] = round(build(app, sci / "corpus.jsonl", a.chunks), 1)
    result["chunks"] = app.catalog.chunk_count()
    queries = [json.loads(q)["text"] for q in (sci / "queries.train.jsonl").read_text().splitlines()][: a.queries]
    searcher = app.searcher
    searcher.run(queries[0], 10)  # first-use costs (model, HNSW load) are start-up, not search
    for name, filters in (("no_filter", Filters()), ("filter_pdf", Filters(file_type="pdf"))):
        lat, cpu = [], []
        for q in queries:
            t0, c0 = time.perf_counter(), time.process_time()
            searcher.run(q, 10, filters)
            lat.append((time.perf_counter() - t0) * 1000)
            cpu.append((time.process_time() - c0) * 1000)
        result[name] = {"p50_ms": pct(lat, 0.5), "p95_ms": pct(lat, 0.95), "n": len(lat),
                        "cpu_p50_ms": pct(cpu, 0.5), "cpu_p95_ms": pct(cpu, 0.95)}
    result["load_average"] = [round(x, 2) for x in os.getloadavg()]
    app.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Retrieval quality on a BEIR-format corpus, through kb's own pipeline and search.

Usage: python bench/retrieval.py [BENCH_DIR] [--corpus C --queries Q --qrels R] [--data-dir D] [--tune]
BENCH_DIR defaults to ../shared/bench (corpus, queries and qrels default to its scifact/ train files).

Each corpus document becomes a text file "title, blank line, text" ingested by `App.ingest` (a --data-dir
that already holds them is reused: unchanged files are skipped). Every query is searched once per side, as
deep as kb searches for 10 results (nDCG@10) and for 100 (recall@100); both are reported for hybrid (kb's
fusion settings), dense only and lexical only from the same index, plus rank fusion per document for
comparison, and search latency p50/p95 of the whole search (query embedding, both sides, passages) at k=10.
The queries are split once into two halves (seed 7): "halves" reports kb's settings on the half they were
tuned on and on the held-out half. With --tune, the dense weight and the normalisation are chosen again on
the tuning half and reported on the other half. Prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kb.settings import load_settings  # noqa: E402
from kbapp.app import App  # noqa: E402
from retrieval.filters import Filters  # noqa: E402
from retrieval.fusion import DEFAULT, Weights, fuse  # noqa: E402
from retrieval.query import parse  # noqa: E402
from retrieval.search import Sides, depths  # noqa: E402

DEPTH = 100


def load_qrels(path: Path) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for n, line in enumerate(path.read_text().splitlines()):
        parts = line.split("\t")
        if n == 0 and not parts[-1].strip().isdigit():
            continue  # header
        qid, did, score = parts[0], parts[1], int(parts[2])
        if score > 0:
            out.setdefault(qid, {})[did] = score
    return out


def ndcg(ranked: list[str], rel: dict[str, int], k: int = 10) -> float:
    dcg = sum(rel.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted(rel.values(), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall(ranked: list[str], rel: dict[str, int], k: int = 100) -> float:
    return len(set(ranked[:k]) & set(rel)) / len(rel) if rel else 0.0


def ingest(app: App, corpus: Path, files: Path) -> dict[str, object]:
    files.mkdir(parents=True, exist_ok=True)
    for line in corpus.open(encoding="utf-8"):
        d = json.loads(line)
        f = files / f"{d['_id']}.txt"
        body = f"{d.get('title') or ''}\n\n{d['text']}\n"
        if not f.exists() or f.read_text(encoding="utf-8") != body:
            f.write_text(body, encoding="utf-8")
    t0 = time.perf_counter()
    report = app.ingest([files])
    return {"ingest_s": round(time.perf_counter() - t0, 1),
            "added": report.get("added"), "unchanged": report.get("unchanged"), "failed": report.get("failed")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bench", nargs="?", default=str(REPO.parent / "shared" / "bench"))
    ap.add_argument("--corpus")
    ap.add_argument("--queries")
    ap.add_argument("--qrels")
    ap.add_argument("--data-dir", help="reuse this data directory (ingested once, kept)")
    ap.add_argument("--tune", action="store_true", help="choose fusion weights on half the queries")
    ap.add_argument("--latency-queries", type=int, default=200)
    a = ap.parse_args()
    sci = Path(a.bench) / "scifact"
    corpus = Path(a.corpus or sci / "corpus.jsonl")
    queries = {
        q["_id"]: q["text"]
        for q in map(json.loads, Path(a.queries or sci / "queries.train.jsonl").read_text().splitlines())
    }
    qrels = load_qrels(Path(a.qrels or sci / "qrels" / "train.tsv"))
    qids = [q for q in queries if q in qrels]

    root = Path(a.data_dir) if a.data_dir else Path(tempfile.mkdtemp(prefix="kb-retrieval-"))
    app = App(load_settings(data_dir=root / "data"))
    app.recover()
    app.warm_up()
    result: dict[str, object] = {"corpus": str(corpus), "queries": len(qids), **ingest(app, corpus, root / "files")}

    searcher = app.searcher
    doc_name: dict[int, str] = {}

    def names(doc_ids: list[int]) -> list[str]:
        missing = [d for d in doc_ids if d not in doc_name]
        for d, rec in app.catalog.documents(missing).items():
            doc_name[d] = Path(rec.paths[0]).stem if rec.paths else ""
        return [doc_name.get(d, "") for d in doc_ids]

    # Each side once per query and depth, as deep as a search for 10 (nDCG@10) and for 100 (recall@100)
    # results looks (retrieval.search.depths); fusion variants are computed from these scores.
    sides: dict[int, dict[str, Sides]] = {10: {}, DEPTH: {}}
    for qid in qids:
        q = parse(queries[qid])
        for k in sides:
            sides[k][qid] = searcher.sides(q, *depths(k), Filters())

    def ranking(s: Sides, weights: Weights | None, side: str) -> list[str]:
        if side == "dense":
            scores = s.dense_docs
        elif side == "lexical":
            scores = s.lexical_docs
        else:
            scores = fuse(s.dense_docs, s.lexical_docs, weights or DEFAULT)
        return names(sorted(scores, key=lambda d: (-scores[d], -s.lexical_docs.get(d, 0.0))))

    def evaluate(weights: Weights | None, ids: list[str], side: str = "hybrid") -> dict[str, float]:
        n10 = [ndcg(ranking(sides[10][qid], weights, side), qrels[qid]) for qid in ids]
        r100 = [recall(ranking(sides[DEPTH][qid], weights, side), qrels[qid]) for qid in ids]
        return {"ndcg@10": round(statistics.mean(n10), 4), "recall@100": round(statistics.mean(r100), 4)}

    result["settings"] = {"dense": DEFAULT.dense, "lexical": DEFAULT.lexical, "method": DEFAULT.method}
    result["hybrid"] = evaluate(DEFAULT, qids)
    result["dense"] = evaluate(None, qids, "dense")
    result["lexical"] = evaluate(None, qids, "lexical")
    result["rrf_per_document"] = evaluate(Weights(method="rrf"), qids)

    # The queries split in two halves once (seed 7): settings are tuned on the first only, and the second
    # says whether they hold on queries not tuned on.
    rng = random.Random(7)
    shuffled = qids[:]
    rng.shuffle(shuffled)
    tune, check = shuffled[: len(shuffled) // 2], shuffled[len(shuffled) // 2:]
    result["halves"] = {"tune_half": evaluate(DEFAULT, tune), "held_out_half": evaluate(DEFAULT, check),
                        "tune_n": len(tune), "held_out_n": len(check)}
    if a.tune:
        grid = [Weights(round(w, 2), round(1 - w, 2), m) for m in ("minmax", "max") for w in
                [i / 20 for i in range(1, 20)]]
        scored = [(evaluate(w, tune)["ndcg@10"], w) for w in grid]
        best_score, best = max(scored, key=lambda t: t[0])
        result["tuning"] = {
            "tuned_on": len(tune), "checked_on": len(check),
            "best": {"dense": best.dense, "lexical": best.lexical, "method": best.method},
            "tune_half": best_score, "other_half": evaluate(best, check),
            "defaults_on_other_half": evaluate(DEFAULT, check),
            "grid": {f"{w.method}:{w.dense}": s for s, w in scored},
        }

    lat = []
    for qid in qids[: a.latency_queries]:
        t0 = time.perf_counter()
        searcher.run(queries[qid], 10)
        lat.append((time.perf_counter() - t0) * 1000)
    lat.sort()
    result["latency_ms"] = {"p50": round(lat[len(lat) // 2], 1), "p95": round(lat[int(len(lat) * 0.95) - 1], 1),
                            "n": len(lat)}
    pages = [searcher.run(queries[qid], 10).hits for qid in qids[:100]]
    result["distinct_documents_per_page_of_10"] = round(statistics.mean(len({h.document.id for h in p})
                                                                         for p in pages), 2)
    app.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Answer benchmark on SQuAD 2.0: exact match, F1, citation precision, abstention, time to first token, speed.

Usage: python bench/qa.py [BENCH_DIR] [--questions 200] [--k 3] [--max-tokens 64] [--seed 7] [--min-coverage X]
       [--calibrate]
BENCH_DIR defaults to ../shared/bench (the data used is BENCH_DIR/qa/squad2_dev_cs224n_split/dev-v2.0.json).

The even-numbered articles of the split are ingested as the library (one text file per article, its
paragraphs separated by blank lines); questions are sampled from them, half answerable, half unanswerable
(SQuAD's adversarial questions: on the topic, but the text does not hold the answer). Each is answered by
the default settings' model through the same path as `kb ask`.

--calibrate measures the abstention threshold instead (no language model): the best passage's dense
similarity for answerable questions about the library's articles against questions about the odd-numbered
articles, which are not in the library. It prints both distributions and the threshold that separates them
best (Youden's J); Settings.answer_min_similarity holds the value chosen from it. It also prints, for each
share of the question's words a passage must hold (Settings.answer_min_coverage), how many answerable questions
keep a passage about them and how many unanswerable ones are refused before the model is asked.

Prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import re
import statistics
import string
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kb.settings import load_settings  # noqa: E402
from kbapp.app import App  # noqa: E402
from retrieval.citations import CITATION  # noqa: E402

ABSTAINED = {"not_in_library", "no_answer", "unsupported"}


def normalize(text: str) -> str:
    """SQuAD's answer normalization: lowercase, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def f1(prediction: str, gold: str) -> float:
    p, g = normalize(prediction).split(), normalize(gold).split()
    if not p or not g:
        return float(p == g)
    common = collections.Counter(p) & collections.Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def load_articles(bench: Path) -> list[dict[str, Any]]:
    path = bench / "qa" / "squad2_dev_cs224n_split" / "dev-v2.0.json"
    return list(json.loads(path.read_text())["data"])


def questions(articles: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for a in articles:
        for p in a["paragraphs"]:
            for q in p["qas"]:
                out.append({"question": q["question"], "impossible": bool(q["is_impossible"]),
                            "answers": sorted({x["text"] for x in q["answers"]}), "title": a["title"]})
    return out


def build_library(articles: list[dict[str, Any]], work: Path, **settings: Any) -> App:
    docs = work / "squad"
    docs.mkdir()
    for a in articles:
        name = re.sub(r"\W+", "_", a["title"])[:60]
        (docs / f"{name}.txt").write_text("\n\n".join(p["context"] for p in a["paragraphs"]) + "\n")
    app = App(load_settings(data_dir=work / "data", workers=0, **settings))
    t = time.perf_counter()
    report = app.ingest([docs])
    print(f"ingested {report['added']} articles in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    return app


def best_similarity(app: App, question: str) -> float:
    hits = app.searcher.search(question, k=1)
    sims = [h.similarity for h in hits if h.similarity is not None]
    return max(sims) if sims else -1.0


def coverage_split(
    app: App, answerable: list[dict[str, Any]], unanswerable: list[dict[str, Any]], k: int
) -> dict[str, Any]:
    """How well "a passage about the question" (retrieval.citations.about: a share of the question's content
    words, all its names and numbers, its negation) separates SQuAD's answerable questions from its adversarial
    unanswerable ones (same topic, answer not in the text), for each share: the curve that
    Settings.answer_min_coverage is chosen on. Only passages past the similarity gate count, as in answers."""
    from retrieval.citations import about

    floor = app.settings.answer_min_similarity
    passages: dict[str, list[str]] = {}
    for q in answerable + unanswerable:
        hits = app.searcher.search(q["question"], k=k)
        passages[q["question"]] = [h.chunk.text for h in hits if h.similarity is None or h.similarity >= floor]

    def kept(qs: list[dict[str, Any]], share: float) -> float:
        return sum(any(about(q["question"], p, share) for p in passages[q["question"]]) for q in qs) / len(qs)

    curve = {}
    for share in (0.0, 0.5, 0.6, 0.67, 0.75, 0.8, 1.0):
        a, u = kept(answerable, share), kept(unanswerable, share)
        curve[str(share)] = {"kept_answerable": round(a, 4), "refused_unanswerable": round(1 - u, 4),
                             "youden_j": round(a - u, 4)}
    return {"coverage_curve": curve}


def calibrate(app: App, inside: list[dict[str, Any]], outside: list[dict[str, Any]]) -> dict[str, Any]:
    """The similarity threshold separating questions the library can answer from questions about other topics."""
    sim_in = sorted(best_similarity(app, q["question"]) for q in inside)
    sim_out = sorted(best_similarity(app, q["question"]) for q in outside)
    best_t, best_j = 0.0, -1.0
    for t in sorted(set(sim_in + sim_out)):
        tpr = sum(s >= t for s in sim_in) / len(sim_in)
        fpr = sum(s >= t for s in sim_out) / len(sim_out)
        if tpr - fpr > best_j:
            best_t, best_j = t, tpr - fpr

    def q(xs: list[float], p: float) -> float:
        return round(xs[min(len(xs) - 1, int(p * len(xs)))], 4)

    return {
        "in_library": {"n": len(sim_in), "p05": q(sim_in, 0.05), "p10": q(sim_in, 0.1), "median": q(sim_in, 0.5)},
        "not_in_library": {"n": len(sim_out), "median": q(sim_out, 0.5), "p90": q(sim_out, 0.9),
                           "p95": q(sim_out, 0.95)},
        "threshold_youden": round(best_t, 4), "youden_j": round(best_j, 4),
        "threshold_keeping_95pct": q(sim_in, 0.05),
        "refused_not_in_library_at_95pct": round(sum(s < q(sim_in, 0.05) for s in sim_out) / len(sim_out), 4),
        "kept_in_library_at_threshold": round(sum(s >= best_t for s in sim_in) / len(sim_in), 4),
        "refused_not_in_library_at_threshold": round(sum(s < best_t for s in sim_out) / len(sim_out), 4),
    }


def run_questions(app: App, sample: list[dict[str, Any]], k: int, dump: TextIO | None = None) -> dict[str, Any]:
    em: dict[str, list[float]] = {"answerable": [], "unanswerable": []}
    f1s: dict[str, list[float]] = {"answerable": [], "unanswerable": []}
    statuses: dict[str, collections.Counter[str]] = {"answerable": collections.Counter(),
                                                     "unanswerable": collections.Counter()}
    cited_ok: list[bool] = []
    ttft: list[float] = []
    speeds: list[float] = []
    for i, q in enumerate(sample):
        started = time.perf_counter()
        first = None
        final: dict[str, Any] = {}
        for event in app.ask_stream(q["question"], k=k):
            if event["event"] == "token" and first is None:
                first = time.perf_counter() - started
            elif event["event"] == "answer":
                final = event["answer"]
        group = "unanswerable" if q["impossible"] else "answerable"
        statuses[group][final["status"]] += 1
        abstained = final["status"] in ABSTAINED
        prediction = "" if abstained else CITATION.sub("", final["answer"]).strip()
        golds = q["answers"] or [""]
        em[group].append(max(float(normalize(prediction) == normalize(g)) for g in golds))
        f1s[group].append(max(f1(prediction, g) for g in golds))
        if first is not None:
            ttft.append(first)
            if final["timings"].get("tokens_per_s"):
                speeds.append(final["timings"]["tokens_per_s"])
        if dump is not None:
            given = {p["n"]: p["text"] for p in final["passages"] if p["given"]}
            dump.write(json.dumps({**q, "status": final["status"], "raw": final["raw"], "answer": final["answer"],
                                   "cited": final["cited"], "best_similarity": final["best_similarity"],
                                   "passages": given}, ensure_ascii=False) + "\n")
        if not abstained and final["cited"] and q["answers"]:
            texts = {p["n"]: normalize(p["text"]) for p in final["passages"]}
            cited_ok.append(all(any(normalize(g) in texts[n] for g in golds) for n in final["cited"]))
        if (i + 1) % 20 == 0:
            print(f"{i + 1}/{len(sample)} questions", file=sys.stderr)

    def mean(xs: list[float]) -> float | None:
        return round(statistics.fmean(xs), 4) if xs else None

    every = em["answerable"] + em["unanswerable"]
    every_f1 = f1s["answerable"] + f1s["unanswerable"]
    n_un = len(em["unanswerable"])
    return {
        "questions": len(sample), "answerable": len(em["answerable"]), "unanswerable": n_un,
        "exact_match": mean(every), "f1": mean(every_f1),
        "exact_match_answerable": mean(em["answerable"]), "f1_answerable": mean(f1s["answerable"]),
        "citation_precision": mean([float(x) for x in cited_ok]), "answers_with_citations": len(cited_ok),
        "abstention_accuracy_unanswerable": round(sum(statuses["unanswerable"][s] for s in ABSTAINED) / n_un, 4)
        if n_un else None,
        "abstention_strict_unanswerable": round(
            sum(statuses["unanswerable"][s] for s in ("not_in_library", "no_answer")) / n_un, 4) if n_un else None,
        "answered_share_answerable": round(
            statuses["answerable"]["answered"] / max(1, len(em["answerable"])), 4),
        "statuses": {g: dict(c) for g, c in statuses.items()},
        "ttft_median_s": round(statistics.median(ttft), 3) if ttft else None,
        "ttft_p90_s": round(sorted(ttft)[int(0.9 * (len(ttft) - 1))], 3) if ttft else None,
        "tokens_per_s": round(statistics.median(speeds), 1) if speeds else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bench", nargs="?", default=str(REPO.parent / "shared" / "bench"))
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--k", type=int, default=3, help="Passages retrieved per question.")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--min-coverage", type=float, help="Override Settings.answer_min_coverage.")
    parser.add_argument("--calibrate", action="store_true")
    parser.add_argument("--dump", type=Path, help="Write each question's answer and passages here (JSON lines).")
    args = parser.parse_args()
    articles = load_articles(Path(args.bench))
    library, others = articles[0::2], articles[1::2]
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="kb-qa-") as tmp:
        overrides: dict[str, Any] = {"llm_max_tokens": args.max_tokens}
        if args.min_coverage is not None:
            overrides["answer_min_coverage"] = args.min_coverage
        app = build_library(library, Path(tmp), **overrides)
        try:
            inside = questions(library)
            if args.calibrate:
                answerable = rng.sample([q for q in inside if not q["impossible"]], args.questions)
                outside = rng.sample(questions(others), args.questions)
                unanswerable = rng.sample([q for q in inside if q["impossible"]], args.questions)
                result: dict[str, Any] = {"bench": "qa-calibrate", **calibrate(app, answerable, outside),
                                          **coverage_split(app, answerable, unanswerable, args.k)}
            else:
                half = args.questions // 2
                sample = rng.sample([q for q in inside if not q["impossible"]], args.questions - half)
                sample += rng.sample([q for q in inside if q["impossible"]], half)
                rng.shuffle(sample)
                t = time.perf_counter()
                app.language_model()
                getattr(app.language_model(), "load", lambda: None)()
                load_s = time.perf_counter() - t
                result = {"bench": "qa", "model": app.settings.llm_model, "k": args.k, "max_tokens": args.max_tokens,
                          "min_similarity": app.settings.answer_min_similarity,
                          "min_coverage": app.settings.answer_min_coverage, "model_load_s": round(load_s, 2),
                          **run_questions(app, sample, args.k, args.dump.open("w") if args.dump else None)}
        finally:
            app.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""The web service under load: `kb serve` over a library of real text (at least 5,000 chunks), driven from
this second process on loopback with a bounded number of requests.

Usage: python bench/serve.py [BENCH_DIR] [--keep DIR] [--docs 2000] [--requests 100] [--asks 5] [--repo R]

BENCH_DIR defaults to ../shared/bench. The library is SciFact's abstracts (title and text, one .txt file
each) read by the real pipeline (`kb ingest`: parsing, chunking, the real embedding model); with --keep the
built library is kept there and reused by the next run. Then `kb serve` starts on a free port (from --repo,
default this checkout: point it at a merge with the ui branch to time the real search page) and, once its
models are loaded, this process measures:
  - API search (GET /api/v1/search?q=...&k=10) and the search page (GET /?q=...) latency, p50/p95, at 1
    client (--requests sequential requests) and at 20 concurrent clients (requests/10 each: 2 x requests);
  - time to the first answer token over Server-Sent Events (GET /api/v1/ask/stream), median of --asks
    questions about documents of the library (by title; the answers that streamed tokens are timed);
  - errors (any non-2xx status or failed request; must be 0), and the service's RSS (its own, and with
    its parser processes).
Queries are SciFact's training claims. Prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    print(f"[serve-bench] {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))] * 1000, 1)


def env_for(data: Path, repo: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KB_")}
    env.update(KB_DATA_DIR=str(data), PYTHONPATH=str(repo), KB_RECONCILE_INTERVAL_S="0")
    return env


def kb(repo: Path) -> list[str]:
    return [sys.executable, "-m", "kbapp.cli"]


def chunks_in(data: Path) -> int:
    import sqlite3

    db = data / "catalog.sqlite3"
    if not db.exists():
        return 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(con.execute("SELECT count(*) FROM chunks").fetchone()[0])
    except sqlite3.Error:
        return 0
    finally:
        con.close()


def build_library(bench: Path, data: Path, docs: int, repo: Path, min_chunks: int) -> None:
    """SciFact abstracts as text files, read by `kb ingest` (skipped when a kept library is big enough)."""
    have = chunks_in(data)
    if have >= min_chunks:
        log(f"reusing the kept library: {have} chunks")
        return
    src = data.parent / "scifact-txt"
    src.mkdir(parents=True, exist_ok=True)
    n = 0
    with (bench / "scifact" / "corpus.jsonl").open(encoding="utf-8") as f:
        for line in f:
            if n >= docs:
                break
            d = json.loads(line)
            p = src / f"{d['_id']}.txt"
            if not p.exists():
                p.write_text(f"{d['title']}\n\n{d['text']}\n", encoding="utf-8")
            n += 1
    t0 = time.perf_counter()
    out = subprocess.run([*kb(repo), "ingest", str(src), "--json"], env=env_for(data, repo), cwd=data.parent,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"kb ingest failed: {out.stderr[-2000:]}")
    log(f"ingest of {n} files: {time.perf_counter() - t0:.0f} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def queries(bench: Path, n: int) -> list[str]:
    out = []
    with (bench / "scifact" / "queries.train.jsonl").open(encoding="utf-8") as f:
        for line in f:
            out.append(json.loads(line)["text"])
            if len(out) >= n:
                break
    return out


class Counter:
    def __init__(self) -> None:
        self.errors = 0
        self.error_kinds: dict[str, int] = {}
        self.lock = threading.Lock()

    def bad(self, what: str) -> None:
        with self.lock:
            self.errors += 1
            self.error_kinds[what] = self.error_kinds.get(what, 0) + 1


def timed_gets(base: str, paths: list[str], clients: int, errors: Counter) -> list[float]:
    """GET every path, `clients` at a time (each client its own connection), the latency of each."""
    times: list[float] = []
    lock = threading.Lock()
    parts = [paths[i::clients] for i in range(clients)]
    start = threading.Barrier(clients)

    def client(mine: list[str]) -> None:
        with httpx.Client(base_url=base, timeout=120) as c:
            start.wait()
            for p in mine:
                t0 = time.perf_counter()
                try:
                    r = c.get(p, headers={"accept": "text/html" if not p.startswith("/api/") else "application/json"})
                    r.read()
                    ok = r.status_code < 300
                except httpx.HTTPError as exc:
                    ok = False
                    errors.bad(type(exc).__name__)
                dt = time.perf_counter() - t0
                if not ok:
                    errors.bad(f"status {getattr(r, 'status_code', '?')}")
                with lock:
                    times.append(dt)

    threads = [threading.Thread(target=client, args=(m,)) for m in parts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return times


def first_token(base: str, question: str, errors: Counter) -> tuple[float | None, float | None, int]:
    """Seconds to the first `token` event, and to `done`, of one streamed answer, and its token events."""
    t0 = time.perf_counter()
    first = None
    tokens = 0
    try:
        with httpx.Client(base_url=base, timeout=300) as c, c.stream("GET", "/api/v1/ask/stream",
                                                                       params={"q": question}) as r:
            if r.status_code != 200:
                errors.bad(f"ask status {r.status_code}")
                return None, None, 0
            event = None
            for line in r.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                    if event == "token":
                        tokens += 1
                        if first is None:
                            first = time.perf_counter() - t0
                    if event == "error":
                        errors.bad("ask error event")
                    if event == "done":
                        break
                elif line.startswith("data: ") and event == "answer" and first is None:
                    first = time.perf_counter() - t0  # a refusal answers at once, with no tokens
    except httpx.HTTPError as exc:
        errors.bad(type(exc).__name__)
        return None, None, 0
    return first, time.perf_counter() - t0, tokens


def rss(pid: int) -> tuple[int, int]:
    import psutil

    p = psutil.Process(pid)
    own = p.memory_info().rss
    total = own + sum(c.memory_info().rss for c in p.children(recursive=True))
    return own, total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bench", nargs="?", default=str(REPO.parent / "shared" / "bench"))
    ap.add_argument("--keep", help="Keep the built library in this folder (reused when it is there).")
    ap.add_argument("--docs", type=int, default=2000, help="SciFact abstracts to ingest (about 2.9 chunks each).")
    ap.add_argument("--min-chunks", type=int, default=5000, help="A kept library with this many is reused.")
    ap.add_argument("--requests", type=int, default=100, help="Requests per measurement (1 client).")
    ap.add_argument("--asks", type=int, default=5, help="Streamed answers timed.")
    ap.add_argument("--repo", default=str(REPO), help="The checkout whose `kb serve` runs.")
    a = ap.parse_args()
    bench, repo = Path(a.bench), Path(a.repo).resolve()
    root = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="kb-serve-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    data = root / "data"
    build_library(bench, data, a.docs, repo, a.min_chunks)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    t_start = time.perf_counter()
    proc = subprocess.Popen([*kb(repo), "serve", "--port", str(port), "-q"], env=env_for(data, repo), cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    result: dict[str, Any] = {}
    errors = Counter()
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        url_after = time.perf_counter() - t_start
        if "kb: open" not in line:
            raise SystemExit(f"kb serve did not start: {line} {proc.stderr.read() if proc.stderr else ''}")
        with httpx.Client(base_url=base, timeout=60) as c:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:  # models loaded and the queue drained: an idle service
                st = c.get("/api/v1/status").json()
                m, jobs = st["models"], st["jobs"]
                if (m["embedding"]["state"] == "ready" and m["answer"]["state"] != "loading"
                        and not jobs.get("queued") and not jobs.get("running")):
                    break
                time.sleep(0.5)
            status = c.get("/api/v1/status").json()
        ready_after = time.perf_counter() - t_start
        log(f"service ready: {status['documents']} documents, {status['chunks']} chunks, models {status['models']}")
        qs = queries(bench, max(a.requests, 40))
        from urllib.parse import quote

        api = [f"/api/v1/search?q={quote(q)}&k=10" for q in qs[: a.requests]]
        page = [f"/?q={quote(q)}" for q in qs[: a.requests]]
        n20 = 20 * max(1, a.requests // 10)  # 20 clients, requests/10 each
        api20 = [f"/api/v1/search?q={quote(qs[i % len(qs)])}&k=10" for i in range(n20)]
        page20 = [f"/?q={quote(qs[i % len(qs)])}" for i in range(len(api20))]
        timed_gets(base, api[:5], 1, errors)  # warm: first query embeddings, caches
        measures: dict[str, list[float]] = {}
        measures["api_1"] = timed_gets(base, api, 1, errors)
        measures["page_1"] = timed_gets(base, page, 1, errors)
        measures["api_20"] = timed_gets(base, api20, 20, errors)
        measures["page_20"] = timed_gets(base, page20, 20, errors)
        # SciFact's claims are statements the answer gate mostly refuses at once (no model call), which would
        # time a refusal: the questions timed ask about documents of the library by their title instead
        # (the files are named by their SciFact id: the title is the first line of the text)
        with httpx.Client(base_url=base, timeout=60) as c:
            docs = c.get("/api/v1/documents", params={"limit": 4 * a.asks, "status": "ready"}).json()["items"]
            firsts_lines = [c.get(f"/api/v1/documents/{d['ref']}/text").json()["chunks"][0]["text"].split("\n")[0]
                            for d in docs]
        titles = [t for t in firsts_lines if len(t.split()) >= 4]
        questions = [f"What did the study of {t.rstrip('.')} find?" for t in titles] or qs
        firsts, totals, answered, asked = [], [], 0, 0
        for q in questions[: 4 * a.asks]:  # until --asks of them were answered (a refusal streams no tokens)
            if answered >= a.asks:
                break
            asked += 1
            f, t, tokens = first_token(base, q, errors)
            if f is not None and t is not None and tokens:
                answered += 1
                firsts.append(f)
                totals.append(t)
        own, total = rss(proc.pid)
        result = {
            "library": {"documents": status["documents"], "chunks": status["chunks"]},
            "url_printed_s": round(url_after, 2), "models_ready_s": round(ready_after, 2),
            **{f"{k}_p50_ms": pct(v, 50) for k, v in measures.items()},
            **{f"{k}_p95_ms": pct(v, 95) for k, v in measures.items()},
            "requests": {k: len(v) for k, v in measures.items()},
            "ask_first_token_s_median": round(statistics.median(firsts), 2) if firsts else None,
            "ask_total_s_median": round(statistics.median(totals), 2) if totals else None,
            "asks": asked, "asks_answered": answered,  # timed: the answers that streamed tokens
            "errors": errors.errors, "error_kinds": errors.error_kinds,
            "service_rss_mb": round(own / 2**20), "service_rss_with_parsers_mb": round(total / 2**20),
            "cpus": os.cpu_count(),
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = -9
        result["exit_code"] = code
    print(json.dumps(result))


if __name__ == "__main__":
    main()

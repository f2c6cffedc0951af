"""Ingestion benchmark through the job queue: pipeline throughput vs the raw embedder, re-scan speed, peak
memory, and the time from `kb ingest FILE` (service running) to the file being searchable.

Usage: python bench/ingest.py [BENCH_DIR] [--folder F] [--rescan-files 1000] [--latency-runs 5]
BENCH_DIR defaults to ../shared/bench (the folder used is BENCH_DIR/docs/debian). Default settings
throughout (parser processes, lanes). Prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ingest.chunking import embed_text  # noqa: E402
from kb.settings import load_settings  # noqa: E402
from kbapp.app import App  # noqa: E402

KB = str(Path(sys.executable).parent / "kb")


def rss_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def children_peak_mb() -> float:
    """Peak resident memory of the largest live child (a parser process), from /proc."""
    peak = 0.0
    me = os.getpid()
    for pid in Path(f"/proc/{me}/task/{me}/children").read_text().split():
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]) / 1024)
    return round(peak, 1)


class ChildPeak:
    """Samples the peak resident memory of live children (parser processes) while the work runs.

    (RUSAGE_CHILDREN is no use here: a child started by fork+exec inherits the parent's high-water mark.)
    """

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self.peak = max(self.peak, children_peak_mb())

    def __enter__(self) -> ChildPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def throughput(folder: Path, tmp: Path, rescan_files: int) -> dict[str, object]:
    with ChildPeak() as children:
        result = _throughput(folder, tmp, rescan_files)
    result["peak_rss_parse_workers_mb"] = round(children.peak, 1)
    return result


def _throughput(folder: Path, tmp: Path, rescan_files: int) -> dict[str, object]:
    app = App(load_settings(data_dir=tmp / "data"))
    app.recover()
    # Models and a parser process load before the clock starts, as in a running service.
    app.warm_up()

    t0 = time.perf_counter()
    report = app.ingest([folder])
    pipeline_s = time.perf_counter() - t0
    chunks = app.catalog.chunk_count()

    texts = [embed_text(c.text, c.section) for batch in app.catalog.iter_chunk_batches(5000) for c in batch]
    t0 = time.perf_counter()
    app.embedder.embed(texts)
    raw_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    again = app.ingest([folder])
    rescan_s = time.perf_counter() - t0

    many = tmp / "many"
    many.mkdir()
    for i in range(rescan_files):
        (many / f"note{i:05d}.txt").write_text(f"Note {i}: remember item {i} on the shopping list.\n")
    t0 = time.perf_counter()
    first_many = app.ingest([many])
    many_ingest_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    many_report = app.ingest([many])
    many_s = time.perf_counter() - t0
    app.close()
    return {
        "folder": str(folder),
        "files": report["files"],
        "failed": report["failed"],
        "chunks": chunks,
        "seconds": round(pipeline_s, 2),
        "chunks_per_s": round(chunks / pipeline_s, 2),
        "raw_embed_chunks_per_s": round(len(texts) / raw_s, 2),
        "pipeline_vs_raw": round((chunks / pipeline_s) / (len(texts) / raw_s), 3),
        "rescan_unchanged": again["unchanged"],
        "rescan_seconds": round(rescan_s, 3),
        "small_files": first_many["added"],
        "small_files_per_s": round(first_many["added"] / many_ingest_s, 1),
        "rescan_many_files": many_report["unchanged"],
        "rescan_many_seconds": round(many_s, 3),
        "peak_rss_mb": round(rss_mb(resource.RUSAGE_SELF), 1),
    }


def _kb(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KB, *args], env=env, capture_output=True, text=True, timeout=300, check=True)


def latency(tmp: Path, runs: int) -> dict[str, object]:
    """Seconds from `kb ingest FILE` to the command returning with FILE searchable, service running, idle."""
    data = tmp / "svc"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KB_")}
    env.update(KB_DATA_DIR=str(data), KB_INBOX=json.dumps([str(tmp / "svc-inbox")]))
    service = subprocess.Popen([KB, "watch"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while True:  # ready: answering, and the first inbox scan (after the warm-up) has run
            proc = subprocess.run([KB, "status", "--json"], env=env, capture_output=True, text=True, timeout=60)
            if proc.returncode == 0:
                st = json.loads(proc.stdout)
                if st.get("service") == "running" and st["jobs"].get("done", 0) >= 1:
                    break
            if time.monotonic() > deadline or service.poll() is not None:
                raise SystemExit("the service did not start")
            time.sleep(0.5)
        times = []
        found = 0
        for i in range(runs):
            note = tmp / f"latency{i}.txt"
            word = f"quokka{i}zebra"
            note.write_text(f"A small note about {word} and the harbour.\n")
            t0 = time.perf_counter()
            _kb(env, "ingest", str(note))
            times.append(time.perf_counter() - t0)
            hits = json.loads(_kb(env, "search", word, "-k", "1", "--json").stdout)
            found += bool(hits) and hits[0]["path"] == str(note)
            time.sleep(0.5)
        t0 = time.perf_counter()
        _kb(env, "status", "--json")
        status_s = time.perf_counter() - t0
    finally:
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(timeout=60)
        except subprocess.TimeoutExpired:
            service.kill()
    return {
        "ingest_to_searchable_s_median": round(statistics.median(times), 3),
        "ingest_to_searchable_s_max": round(max(times), 3),
        "ingest_searchable_found": f"{found}/{runs}",
        "status_via_service_s": round(status_s, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("bench", nargs="?", default=str(REPO.parent / "shared" / "bench"))
    ap.add_argument("--folder", help="folder to ingest (default BENCH/docs/debian)")
    ap.add_argument("--rescan-files", type=int, default=1000, help="size of the synthetic re-scan folder")
    ap.add_argument("--latency-runs", type=int, default=5)
    args = ap.parse_args()
    folder = Path(args.folder) if args.folder else Path(args.bench) / "docs" / "debian"
    if not folder.is_dir():
        sys.exit(f"no such folder: {folder}")
    with tempfile.TemporaryDirectory(prefix="kb-bench-") as tmp:
        result = throughput(folder, Path(tmp), args.rescan_files)
        result.update(latency(Path(tmp), args.latency_runs))
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Ingestion benchmark: pipeline throughput vs the raw embedder, unchanged re-scan speed, peak memory.

Usage: python bench/ingest.py [FOLDER] [--rescan-files 1000]
FOLDER defaults to ../shared/bench/docs/debian. Prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ingest.chunking import embed_text  # noqa: E402
from kbapp.app import App  # noqa: E402
from kb.settings import load_settings  # noqa: E402


def rss_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def _children_peak_mb() -> float:
    """Peak resident memory of the largest live child (the parser worker), from /proc."""
    import os

    peak = 0.0
    for pid in Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split():
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]) / 1024)
    return round(peak, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("folder", nargs="?", default=str(REPO.parent / "shared" / "bench" / "docs" / "debian"))
    ap.add_argument("--rescan-files", type=int, default=1000, help="size of the synthetic re-scan folder")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    folder = Path(args.folder)
    if not folder.is_dir():
        sys.exit(f"no such folder: {folder}")

    with tempfile.TemporaryDirectory(prefix="kb-bench-") as tmp:
        app = App(load_settings(data_dir=Path(tmp) / "data", workers=args.workers))
        # Models and parser libraries load before the clock starts, as in a running service.
        app.embedder.embed(["warm up the model before the clock starts"])
        app.index()
        app.parse_service.warm_up()

        t0 = time.perf_counter()
        report = app.ingestor.ingest([folder])
        pipeline_s = time.perf_counter() - t0

        texts = [embed_text(c.text, c.section) for batch in app.catalog.iter_chunk_batches(5000) for c in batch]
        t0 = time.perf_counter()
        app.embedder.embed(texts)
        raw_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        again = app.ingestor.ingest([folder])
        rescan_s = time.perf_counter() - t0

        # An unchanged re-scan of many files: the stat-only fast path, measured on generated notes.
        many = Path(tmp) / "many"
        many.mkdir()
        for i in range(args.rescan_files):
            (many / f"note{i:05d}.txt").write_text(f"Note {i}: remember item {i} on the shopping list.\n")
        app.ingestor.ingest([many])
        t0 = time.perf_counter()
        many_report = app.ingestor.ingest([many])
        many_s = time.perf_counter() - t0
        workers_mb = _children_peak_mb()
        app.close()

    chunks = report.chunks
    result = {
        "folder": str(folder),
        "files": report.files,
        "failed": len(report.failed),
        "chunks": chunks,
        "seconds": round(pipeline_s, 2),
        "chunks_per_s": round(chunks / pipeline_s, 2),
        "raw_embed_chunks_per_s": round(len(texts) / raw_s, 2),
        "pipeline_vs_raw": round((chunks / pipeline_s) / (len(texts) / raw_s), 3),
        "rescan_files": again.files,
        "rescan_unchanged": again.unchanged,
        "rescan_seconds": round(rescan_s, 3),
        "rescan_files_per_s": round(again.files / rescan_s, 1),
        "rescan_many_files": many_report.unchanged,
        "rescan_many_seconds": round(many_s, 3),
        "peak_rss_mb": round(rss_mb(resource.RUSAGE_SELF), 1),
        "peak_rss_parse_workers_mb": workers_mb,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

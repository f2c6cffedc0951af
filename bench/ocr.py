"""OCR benchmark for kb's tesseract parsers: character error rate, page orientation, seconds per page.

Usage: .venv/bin/python bench/ocr.py [SHARED_BENCH_DIR]   (default: ../shared/bench beside the repo)

Runs the project's own parsers (ImageOcrParser, OcrPdfParser) on ocr/tesseract_test (CER against the gold
text) and ocr/ocrmypdf (cardinal.pdf: one page in each of four rotations; skew.pdf, rotated_skew.pdf).
A page counts as read upright when the reading is confident (mean word confidence >= 80) and mostly
dictionary words (>= 80 % of words of 3+ letters in tesseract's own English word list). Progress goes to
stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.metrics import edit_distance  # noqa: E402
from ingest.parsers.base import Source, no_progress  # noqa: E402
from ingest.parsers.ocr import ImageOcrParser, OcrPdfParser, TesseractOcr  # noqa: E402

UPRIGHT_CONFIDENCE = 80.0
UPRIGHT_DICTIONARY = 0.8
TESSDATA = Path("/usr/share/tesseract-ocr/5/tessdata")


def norm(text: str) -> str:
    """Whitespace-insensitive comparison: line breaks and paragraph gaps are layout, not characters."""
    return " ".join(text.split())


def cer(hyp: str, ref: str) -> float:
    ref, hyp = norm(ref), norm(hyp)
    return edit_distance(hyp, ref) / max(1, len(ref))


def english_words() -> set[str]:
    """Tesseract's English word list (unpacked from eng.traineddata with the tesseract tools)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            subprocess.run(["combine_tessdata", "-u", str(TESSDATA / "eng.traineddata"), f"{tmp}/eng."],
                           check=True, capture_output=True, timeout=60)
            subprocess.run(["dawg2wordlist", f"{tmp}/eng.lstm-unicharset", f"{tmp}/eng.lstm-word-dawg",
                            f"{tmp}/words.txt"], check=True, capture_output=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as exc:
            print(f"no word list ({exc}); dictionary ratio skipped", file=sys.stderr)
            return set()
        return {w.lower() for w in Path(f"{tmp}/words.txt").read_text(encoding="utf-8").split()}


def dictionary_ratio(text: str, words: set[str]) -> float | None:
    tokens = [t.lower() for t in re.findall(r"[A-Za-z]{3,}", text)]
    if not tokens or not words:
        return None
    return round(sum(t in words for t in tokens) / len(tokens), 3)


def doc_text(doc: Any, page: int | None = None) -> str:
    return "\n".join(e.text for e in doc.elements if page is None or e.page == page)


def main(argv: list[str]) -> dict[str, Any]:
    data = Path(argv[1]) if len(argv) > 1 else REPO.parent / "shared" / "bench"
    tt, om = data / "ocr" / "tesseract_test", data / "ocr" / "ocrmypdf"
    threads = os.cpu_count() or 1
    ocr = TesseractOcr("eng", threads=threads)
    images, pdfs = ImageOcrParser(ocr), OcrPdfParser(ocr)
    words = english_words()
    out: dict[str, Any] = {"languages": "eng", "threads": threads, "cer": {}, "pages": {},
                           "load_avg_1m_at_start": round(os.getloadavg()[0], 2)}

    # Character error rate against the gold text; the rotated copies also exercise orientation.
    for name, gold in [("phototest.tif", "phototest.gold.txt"), ("eurotext.tif", "eurotext.txt"),
                       ("phototest-rotated-L.png", "phototest.gold.txt"),
                       ("phototest-rotated-R.png", "phototest.gold.txt"),
                       ("phototest-rotated-180.png", "phototest.gold.txt")]:
        path = tt / name
        t0 = time.perf_counter()
        doc = images.parse(Source.from_path(path), path.suffix[1:], no_progress)
        secs = time.perf_counter() - t0
        ref = (tt / gold).read_text(encoding="utf-8")
        page = doc.meta["ocr"][0]
        out["cer"][name] = {
            "cer": round(cer(doc_text(doc), ref), 4), "confidence": page["confidence"],
            "rotation": page["rotation"], "seconds": round(secs, 2),
        }
        print(f"{name}: {out['cer'][name]}", file=sys.stderr)

    # Orientation and speed on image-only PDFs rendered at 300 dpi.
    pdf_pages = 0
    pdf_seconds = pdf_cpu = 0.0
    for name in ("cardinal.pdf", "skew.pdf", "rotated_skew.pdf"):
        path = om / name
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        doc = pdfs.parse(Source.from_path(path), "pdf", no_progress)
        secs = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        # CPU seconds of the tesseract processes: what a page costs whatever else the machine is doing.
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        pdf_pages += doc.meta["pages"]
        pdf_seconds += secs
        pdf_cpu += cpu
        first = doc_text(doc, 1)
        rows = []
        for p in doc.meta["ocr"]:
            text = doc_text(doc, p["page"])
            ratio = dictionary_ratio(text, words)
            upright = (p["confidence"] or 0) >= UPRIGHT_CONFIDENCE and (ratio is None or ratio >= UPRIGHT_DICTIONARY)
            rows.append({
                "page": p["page"], "rotation": p["rotation"], "confidence": p["confidence"],
                "dictionary_ratio": ratio, "upright": upright,
                # Every page of these files holds the same text: page 1 is the upright reference.
                "cer_vs_page1": round(cer(text, first), 4) if p["page"] > 1 else 0.0,
            })
        out["pages"][name] = {"pages": rows, "seconds": round(secs, 2),
                              "seconds_per_page": round(secs / max(1, doc.meta["pages"]), 2),
                              "tesseract_cpu_s_per_page": round(cpu / max(1, doc.meta["pages"]), 2)}
        print(f"{name}: {out['pages'][name]}", file=sys.stderr)

    all_rows = [r for f in out["pages"].values() for r in f["pages"]]
    out["summary"] = {
        "phototest_cer": out["cer"]["phototest.tif"]["cer"],
        "eurotext_cer_eng_only": out["cer"]["eurotext.tif"]["cer"],
        "cardinal_rotations": [r["rotation"] for r in out["pages"]["cardinal.pdf"]["pages"]],
        "all_upright": all(r["upright"] for r in all_rows),
        "seconds_per_page": round(pdf_seconds / max(1, pdf_pages), 2),
        "tesseract_cpu_s_per_page": round(pdf_cpu / max(1, pdf_pages), 2),
        "single_page_seconds": out["pages"]["skew.pdf"]["seconds"],
        "targets": {"phototest_cer_max": 0.02, "seconds_per_page_max": 3.0},
    }
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv)))

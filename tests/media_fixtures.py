"""Builders for OCR and speech fixtures made at test time: rendered text pages, scans, and spoken audio.

Everything is generated from Debian tools the project installs (DejaVu fonts, espeak-ng, ffmpeg), so the
tests carry no binary files and read nothing from shared data.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts"))
FONT_NAMES = ("DejaVuSerif.ttf", "DejaVuSans.ttf")


def font_path() -> Path:
    """A TrueType font from Debian's fonts-dejavu-core (installed by scripts/install.sh)."""
    for d in FONT_DIRS:
        for name in FONT_NAMES:
            hits = sorted(d.rglob(name)) if d.is_dir() else []
            if hits:
                return hits[0]
    raise RuntimeError("no DejaVu font found: apt-get install fonts-dejavu-core")


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed: apt-get install {name} (scripts/install.sh does)")
    return path


def text_page(
    paragraphs: Sequence[str], *, width: int = 1275, height: int = 1650, font_size: int = 30,
    margin: int = 100, title: str | None = None,
) -> Image.Image:
    """A white grayscale page (150 dpi letter by default) with an optional title and wrapped paragraphs."""
    img = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(img)
    body = ImageFont.truetype(str(font_path()), font_size)
    head = ImageFont.truetype(str(font_path()), int(font_size * 1.5))
    y = margin
    if title:
        draw.text((margin, y), title, font=head, fill=0)
        y += int(font_size * 3)
    for para in paragraphs:
        line = ""
        for word in para.split():
            trial = f"{line} {word}".strip()
            if draw.textlength(trial, font=body) > width - 2 * margin and line:
                draw.text((margin, y), line, font=body, fill=0)
                y += int(font_size * 1.5)
                line = word
            else:
                line = trial
        if line:
            draw.text((margin, y), line, font=body, fill=0)
            y += int(font_size * 1.5)
        y += font_size  # paragraph gap
    return img


def label(text: str, *, font_size: int = 40) -> Image.Image:
    """A small image holding one short line: too little text for tesseract's orientation detection."""
    fnt = ImageFont.truetype(str(font_path()), font_size)
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    w = int(probe.textlength(text, font=fnt))
    img = Image.new("L", (w + 80, font_size * 3), 255)
    ImageDraw.Draw(img).text((40, font_size), text, font=fnt, fill=0)
    return img


def save_pdf(pages: Sequence[Image.Image], path: Path, dpi: int = 150) -> Path:
    """An image-only PDF (no text layer), one page per image, as a scanner would write it."""
    first, *rest = [p.convert("RGB") for p in pages]
    first.save(path, "PDF", save_all=True, append_images=rest, resolution=float(dpi))
    return path


def save_tiff(pages: Sequence[Image.Image], path: Path, dpi: int = 150) -> Path:
    first, *rest = pages
    first.save(path, "TIFF", save_all=True, append_images=list(rest), compression="tiff_lzw", dpi=(dpi, dpi))
    return path


def mixed_pdf(text_lines: Sequence[str], scan: Image.Image, path: Path) -> Path:
    """A PDF whose page 1 has a real text layer and page 2 is only an image (a scan stapled on)."""
    from reportlab.lib.pagesizes import letter
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    c = canvas.Canvas(str(path), pagesize=letter)
    y = 720
    for line in text_lines:
        c.drawString(72, y, line)
        y -= 18
    c.showPage()
    w, h = letter
    c.drawImage(ImageReader(scan.convert("RGB")), 0, 0, width=w, height=h)
    c.showPage()
    c.save()
    return path


def corrupt_png(good: Image.Image, path: Path) -> Path:
    """A PNG cut off halfway: the header reads, the pixel data does not."""
    good.save(path, "PNG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# -- audio -----------------------------------------------------------------------------------------
def ffmpeg(*args: str) -> None:
    subprocess.run([tool("ffmpeg"), "-v", "error", "-y", *args], check=True, timeout=120)


def speak(text: str, path: Path, *, speed: int = 150) -> Path:
    """Synthesised English speech as WAV (espeak-ng), then whatever format `path`'s suffix asks for."""
    wav = path.with_suffix(".espeak.wav")
    subprocess.run([tool("espeak-ng"), "-s", str(speed), "-w", str(wav), text], check=True, timeout=60)
    if path.suffix == ".wav":
        wav.replace(path)
    else:
        convert(wav, path)
        wav.unlink()
    return path


def convert(src: Path, dst: Path) -> Path:
    codec = {".m4a": ["-c:a", "aac"], ".mp4": ["-c:a", "aac"], ".ogg": ["-c:a", "libvorbis"]}.get(dst.suffix, [])
    ffmpeg("-i", str(src), *codec, str(dst))
    return dst


def join_with_silence(parts: Sequence[Path], gap_s: float, dst: Path) -> Path:
    """Concatenate recordings with gap_s of silence after each (mono 22.05 kHz like espeak's output)."""
    inputs: list[str] = []
    for p in parts:
        inputs += ["-i", str(p)]
    pads = "".join(f"[{i}:a]apad=pad_dur={gap_s}[a{i}];" for i in range(len(parts)))
    cat = "".join(f"[a{i}]" for i in range(len(parts))) + f"concat=n={len(parts)}:v=0:a=1"
    ffmpeg(*inputs, "-filter_complex", pads + cat, str(dst))
    return dst


def silence(path: Path, seconds: float = 6.0) -> Path:
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", str(seconds), str(path))
    return path


def video_without_audio(path: Path, seconds: float = 2.0) -> Path:
    ffmpeg("-f", "lavfi", "-i", f"color=c=blue:s=64x64:d={seconds}", "-c:v", "mpeg4", str(path))
    return path


def video_with_speech(speech: Path, path: Path) -> Path:
    """A short video (colour frames) whose audio track is `speech`."""
    ffmpeg("-f", "lavfi", "-i", "color=c=green:s=64x64:r=10", "-i", str(speech), "-shortest",
           "-c:v", "mpeg4", "-c:a", "aac", str(path))
    return path


def truncate(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst

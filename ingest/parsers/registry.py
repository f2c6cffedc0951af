"""The default parser registry: which parser reads which file type.

Worker processes import this module to build their own registry, so it imports only parsers and the
parse configuration (kb core and ingest), never the application.
"""

from __future__ import annotations

from pathlib import Path

from ingest.parsers.attachments import MsgParser
from ingest.parsers.audio import MEDIA_TYPES, WhisperParser
from ingest.parsers.base import ParserRegistry
from ingest.parsers.documents import PARTITIONERS, UnstructuredParser
from ingest.parsers.mail import EmailParser
from ingest.parsers.ocr import IMAGE_TYPES, ImageOcrParser, OcrPdfParser, TesseractOcr
from ingest.parsers.text import DelimitedParser, TextParser
from ingest.parsing import ParseConfig
from kb.blobs import BlobStore

TEXT_TYPES = ("txt", "text", "log", "json", "ndjson", "jsonl", "xml")


def default_registry(config: ParseConfig | int) -> ParserRegistry:
    """Every parser, configured from `config` (a bare int is max_unpacked_bytes with OCR/Whisper defaults).

    Building is cheap: OCR languages are checked and the Whisper model loaded on first use.
    """
    if isinstance(config, int):
        config = ParseConfig(tokenizer_dir=None, max_tokens=512, target_tokens=192, max_unpacked_bytes=config)
    ocr = TesseractOcr(config.ocr_languages, threads=config.threads)
    reg = ParserRegistry()
    text = TextParser()
    reg.register(text, *TEXT_TYPES)
    reg.register_text_fallback(text)
    reg.register(DelimitedParser(), "csv", "tsv")
    reg.register(OcrPdfParser(ocr, max_pages=config.max_pages), "pdf")
    documents = UnstructuredParser(max_unpacked_bytes=config.max_unpacked_bytes)
    reg.register(documents, *PARTITIONERS)
    # Messages save their attachments as parts, each ingested on its own (none saved without a parts dir)
    parts = BlobStore(Path(config.parts_dir)) if config.parts_dir else None
    reg.register(EmailParser(parts=parts, max_attachment_bytes=config.max_attachment_bytes), "eml")
    reg.register(MsgParser(documents, parts, config.max_attachment_bytes), "msg")
    reg.register(ImageOcrParser(ocr, max_pages=config.max_pages), *IMAGE_TYPES)
    reg.register(
        WhisperParser(
            config.whisper_model, language=config.whisper_language, threads=config.threads,
            models_dir=config.models_dir,
        ),
        *MEDIA_TYPES,
    )
    return reg

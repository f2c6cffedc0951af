"""The JSON API of the web service over a real App (fake embedder, embedded Chroma, parsing in-process):
uploads (streamed, sanitised names, the size limit), the library list with queued and failed items,
documents, their text and originals (no path traversal, safe types, Range), mail and attachments,
meetings, the queue, status, search and the streamed answer, and hostile strings coming back as data."""

from __future__ import annotations

import email.message
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import AppFactory
from fixtures import write_pdf
from litestar.testing import TestClient

from kbapp.app import App
from server.app import create_app

XSS = "<script>alert('x')</script>"


@pytest.fixture
def app(make_app: AppFactory) -> App:
    return make_app(upload_max_mb=1)


@pytest.fixture
def c(app: App) -> Iterator[TestClient[Any]]:
    with TestClient(create_app(app, app.settings), base_url="http://testserver.local") as client:
        client.get("/")  # the CSRF cookie, as a browser gets it with the first page
        client.headers["x-csrftoken"] = str(client.cookies.get("csrftoken"))
        yield client


def run(app: App) -> None:
    """Do the queued work now (what the service's workers do in the background)."""
    app.run_batch(app.jobs.new_batch("test"))  # an empty batch: completes at once, after nothing
    runner = app.start_workers()
    try:
        deadline = 200
        while deadline and (app.jobs.counts().get("queued") or app.jobs.counts().get("running")):
            app.jobs.wait(0.1)
            deadline -= 1
    finally:
        runner.stop(grace_s=5)
        app._runner = None


def inbox(app: App) -> Path:
    return app.settings.inbox_paths[0]


def upload(c: TestClient[Any], *files: tuple[str, bytes], **kw: Any) -> Any:
    return c.post("/api/v1/upload", files=[("files", f) for f in files], **kw)


# -- upload ---------------------------------------------------------------------------------------
def test_upload_lands_in_the_inbox_and_is_listed_at_once_then_found(app: App, c: TestClient[Any]) -> None:
    r = upload(c, ("garden notes.txt", b"The tomatoes ripened early in the greenhouse."),
               ("budget.md", b"# Budget\n\nForty pounds on compost."))
    assert r.status_code == 201, r.text
    body = r.json()
    assert [a["name"] for a in body["accepted"]] == ["garden notes.txt", "budget.md"] and body["refused"] == []
    assert (inbox(app) / "garden notes.txt").read_bytes().startswith(b"The tomatoes")
    assert not [p for p in inbox(app).iterdir() if p.name.startswith(".")]  # no temporary file left
    listed = c.get("/api/v1/documents").json()
    assert listed["total"] == 2 and {i["status"] for i in listed["items"]} == {"queued"}
    assert all(i["ref"].startswith("j") and i["id"] is None for i in listed["items"])
    run(app)
    items = c.get("/api/v1/documents?status=ready").json()["items"]
    assert {i["name"] for i in items} == {"garden notes.txt", "budget.md"}
    assert c.get(f"/api/v1/batches/{body['batch']}").json()["complete"] is True
    hits = c.get("/api/v1/search", params={"q": "tomatoes greenhouse"}).json()
    assert hits["hits"][0]["title"] in ("garden notes", "garden notes.txt") and hits["total"] >= 1
    assert "kind" in hits["facets"]


def test_the_upload_form_without_javascript_lands_on_the_library(app: App, c: TestClient[Any]) -> None:
    r = upload(c, ("plain.txt", b"Posted by a browser without scripts."),
               headers={"accept": "text/html,application/xhtml+xml,*/*;q=0.8"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/library"
    assert (inbox(app) / "plain.txt").read_bytes() == b"Posted by a browser without scripts."
    assert upload(c, ("json.txt", b"A script asks for JSON.")).json()["accepted"][0]["name"] == "json.txt"


@pytest.mark.parametrize(("sent", "stored"), [
    ("../../etc/passwd", "passwd"),
    ("..\\..\\windows\\win.ini", "win.ini"),
    ("<script>.txt", "_script_.txt"),
    ("...hidden.txt", "hidden.txt"),
    ("/", "upload"),
    ("..", "upload"),
    ("x" * 400 + ".txt", "x" * 196 + ".txt"),
    ("é" * 150 + ".md", "é" * 98 + ".md"),
])
def test_upload_names_are_sanitised(app: App, c: TestClient[Any], sent: str, stored: str) -> None:
    r = upload(c, (sent, b"some words to read"))
    assert r.status_code == 201, r.text
    [a] = r.json()["accepted"]
    assert a["name"] == stored and len(stored.encode()) <= 200
    assert [p.name for p in inbox(app).iterdir()] == [stored]
    assert not (app.settings.data_dir.parent / "etc").exists()


def test_control_characters_in_a_raw_multipart_name(app: App, c: TestClient[Any]) -> None:
    """httpx escapes a NUL in a file name; a hostile client need not: the body is written by hand here."""
    boundary = "kbboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a\x00b\x1b[31m\u202e.txt\"\r\n"
            f"Content-Type: text/plain\r\n\r\nhello\r\n--{boundary}--\r\n").encode()
    r = c.post("/api/v1/upload", content=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 201, r.text
    [a] = r.json()["accepted"]
    assert a["name"] == "a_b_[31m_.txt" and [p.name for p in inbox(app).iterdir()] == ["a_b_[31m_.txt"]


def test_truncated_or_malformed_multipart_leaves_nothing(app: App, c: TestClient[Any]) -> None:
    head = 'Content-Disposition: form-data; name="files"; filename="cut.txt"\r\n\r\n'
    ctype = {"content-type": "multipart/form-data; boundary=b0"}
    cut = f"--b0\r\n{head}the body stops here without a closing boundary".encode()
    r = c.post("/api/v1/upload", content=cut, headers=ctype)
    assert r.status_code == 400 and "error" in r.json()
    junk = b"not a multipart body at all \x00\xff" * 100
    r = c.post("/api/v1/upload", content=junk, headers=ctype)
    assert r.status_code == 400 and "error" in r.json()
    assert not inbox(app).exists() or list(inbox(app).iterdir()) == []


def test_same_name_twice_is_renamed_not_overwritten(app: App, c: TestClient[Any]) -> None:
    upload(c, ("notes.txt", b"first version"))
    r = upload(c, ("notes.txt", b"second version"), ("notes.txt", b"third version"))
    assert [a["name"] for a in r.json()["accepted"]] == ["notes (2).txt", "notes (3).txt"]
    assert (inbox(app) / "notes.txt").read_bytes() == b"first version"


def test_oversized_upload_is_refused_while_streaming_and_leaves_nothing(app: App, c: TestClient[Any]) -> None:
    big = b"x" * (1024 * 1024 + 1)  # upload_max_mb = 1
    r = upload(c, ("big.txt", big))
    assert r.status_code == 413 and "1 MB limit" in r.json()["error"]["message"]
    assert list(inbox(app).iterdir()) == []
    # a small file before it stays (it was complete), the big one is gone
    r = upload(c, ("small.txt", b"small"), ("big.txt", big))
    assert r.status_code == 413 and "small.txt" in r.json()["error"]["message"]
    assert [p.name for p in inbox(app).iterdir()] == ["small.txt"]


def test_upload_without_csrf_writes_nothing(app: App, c: TestClient[Any]) -> None:
    del c.headers["x-csrftoken"]
    r = upload(c, ("a.txt", b"hello"))
    assert r.status_code == 403
    assert not inbox(app).exists() or list(inbox(app).iterdir()) == []
    # the form field (a page without JavaScript) works when it comes before the files
    token = str(c.cookies.get("csrftoken"))
    r = c.post("/api/v1/upload", data={"_csrf_token": token}, files=[("files", ("a.txt", b"hello"))])
    assert r.status_code == 201, r.text


def test_upload_refuses_what_is_not_a_file_upload(app: App, c: TestClient[Any]) -> None:
    assert c.post("/api/v1/upload", json={"x": 1}).status_code == 415
    r = c.post("/api/v1/upload", files=[("files", ("empty.txt", b""))])
    assert r.status_code == 400 and r.json()["refused"] == [{"name": "empty.txt", "reason": "the file is empty"}]


# -- the library and documents --------------------------------------------------------------------
def test_failed_item_shows_with_reason_retry_and_forget(app: App, c: TestClient[Any]) -> None:
    folder = inbox(app)
    folder.mkdir(parents=True)
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    (folder / "fine.txt").write_text("A fine little document about bees.")
    app.ingest([folder])
    failed = c.get("/api/v1/documents?status=failed").json()
    assert failed["total"] == 1
    [item] = failed["items"]
    assert item["name"] == "broken.pdf" and item["error"] and item["ref"].startswith("s") and item["id"] is None
    assert c.get(f"/api/v1/documents/{item['ref']}").json()["status"] == "failed"
    r = c.post(f"/api/v1/documents/{item['ref']}/retry")
    assert r.status_code == 202 and r.json()["retried"] == 1
    assert c.get("/api/v1/documents?status=queued").json()["total"] == 1
    run(app)
    ready = c.get("/api/v1/documents?status=ready").json()["items"]
    [fine] = [i for i in ready if i["name"] == "fine.txt"]
    r = c.post(f"/api/v1/documents/{fine['ref']}/forget")
    assert r.status_code == 202 and r.json()["forgotten"] == 1
    run(app)
    assert c.get(f"/api/v1/documents/{fine['ref']}").status_code == 404


def test_a_forgotten_file_in_the_inbox_stays_out_until_it_changes_or_is_named(
    app: App, c: TestClient[Any]
) -> None:
    folder = inbox(app)
    folder.mkdir(parents=True)
    bees = folder / "bees.txt"
    bees.write_text("Honey bees dance to tell the hive where the flowers are.")
    app.ingest([folder])
    [item] = c.get("/api/v1/documents?status=ready").json()["items"]
    assert c.post(f"/api/v1/documents/{item['ref']}/forget").status_code == 202
    run(app)
    assert c.get("/api/v1/documents").json()["total"] == 0

    # the periodic scan and a watcher's event (an ingest job for the path) both leave it out
    report = app.ingest([folder])
    assert report["forgotten"] == 1 and report["added"] == 0
    app.jobs.submit("ingest", str(bees), payload={"tag": None})
    run(app)
    assert c.get("/api/v1/documents").json()["total"] == 0 and not app.search("honey bees dance")

    # named on its own, it is asked for: it comes back; forgotten again, a change brings it back too
    assert app.ingest([bees])["added"] == 1
    [item] = c.get("/api/v1/documents?status=ready").json()["items"]
    assert c.post(f"/api/v1/documents/{item['ref']}/forget").status_code == 202
    run(app)
    assert app.ingest([folder])["forgotten"] == 1
    bees.write_text("Honey bees dance to tell the hive where the flowers are, and how far.")
    assert app.ingest([folder])["added"] == 1
    assert app.search("honey bees dance")

    # a deleted file needs no tombstone any more
    [item] = c.get("/api/v1/documents?status=ready").json()["items"]
    c.post(f"/api/v1/documents/{item['ref']}/forget")
    run(app)
    assert app.catalog.forgotten(str(bees))
    bees.unlink()
    app.ingest([folder])
    assert not app.catalog.forgotten(str(bees))


def test_list_filters_and_bounded_pages(app: App, c: TestClient[Any]) -> None:
    folder = inbox(app)
    folder.mkdir(parents=True)
    for i in range(7):
        (folder / f"note-{i}.txt").write_text(f"Note number {i} about the orchard.")
    app.ingest([folder])
    page = c.get("/api/v1/documents?limit=3&offset=3").json()
    assert (page["total"], page["offset"], page["limit"], len(page["items"])) == (7, 3, 3, 3)
    assert c.get("/api/v1/documents?limit=100000").json()["limit"] == 200
    assert c.get("/api/v1/documents?limit=0").json()["limit"] == 1
    assert c.get("/api/v1/documents?q=note-4").json()["total"] == 1
    assert c.get("/api/v1/documents?q=%25").json()["total"] == 0  # LIKE wildcards are literal
    assert c.get("/api/v1/documents?kind=document").json()["total"] == 7
    r = c.get("/api/v1/documents?status=bogus")
    assert r.status_code == 400 and r.json()["error"]["type"] == "ValueError"
    assert c.get("/api/v1/documents?offset=-5").json()["offset"] == 0


@pytest.mark.parametrize("ref", [
    "999", "0", "-1", "s999", "j999", "..", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "1e3", "1.0",
    "99999999999999999999999999", "s", "j-1", "%00", "1%00",
])
def test_originals_by_unknown_or_hostile_refs_are_404(c: TestClient[Any], ref: str) -> None:
    for path in (f"/api/v1/documents/{ref}/original", f"/api/v1/documents/{ref}", f"/api/v1/documents/{ref}/text"):
        r = c.get(path)
        assert r.status_code == 404, (path, r.status_code, r.text)
        assert "root:" not in r.text


def test_originals_types_disposition_range_and_a_deleted_file(app: App, c: TestClient[Any]) -> None:
    folder = inbox(app)
    folder.mkdir(parents=True)
    write_pdf(folder / "report.pdf", ["Quarterly report\nThe roof needs repairs."], title="Quarterly report")
    (folder / "page.html").write_text(f"<html><body><p>Hello {XSS} hedgehogs</p></body></html>")
    (folder / "plain.txt").write_text("0123456789 plain text about otters")
    app.ingest([folder])
    items = {i["name"]: i for i in c.get("/api/v1/documents").json()["items"]}
    pdf = c.get(f"/api/v1/documents/{items['report.pdf']['ref']}/original")
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf.headers["content-disposition"].startswith("inline") and pdf.content.startswith(b"%PDF")
    assert pdf.headers["x-content-type-options"] == "nosniff"
    html = c.get(f"/api/v1/documents/{items['page.html']['ref']}/original")
    assert html.status_code == 200 and "html" not in html.headers["content-type"]
    assert html.headers["content-disposition"].startswith("attachment")
    assert "sandbox" in html.headers["content-security-policy"]
    ref = items["plain.txt"]["ref"]
    r = c.get(f"/api/v1/documents/{ref}/original", headers={"range": "bytes=2-5"})
    assert r.status_code == 206 and r.content == b"2345" and r.headers["content-range"].endswith("/34")
    r = c.get(f"/api/v1/documents/{ref}/original", headers={"range": "bytes=-5"})
    assert r.status_code == 206 and r.content == b"otters"[-5:]
    assert c.get(f"/api/v1/documents/{ref}/original", headers={"range": "bytes=900-"}).status_code == 416
    assert c.get(f"/api/v1/documents/{ref}/original", headers={"range": "pages=1"}).status_code == 416
    doc = c.get(f"/api/v1/documents/{ref}").json()
    assert doc["original"]["inline"] is True and doc["original"]["url"].endswith("/original")
    (folder / "plain.txt").unlink()
    r = c.get(f"/api/v1/documents/{ref}/original")
    assert r.status_code == 404 and "moved or deleted" in r.json()["error"]["message"]
    assert c.get(f"/api/v1/documents/{ref}").json()["original"] is None


def test_text_chunks_with_ids_and_places(app: App, c: TestClient[Any]) -> None:
    folder = inbox(app)
    folder.mkdir(parents=True)
    write_pdf(folder / "two.pdf", ["First page\nAbout apples.", "Second page\nAbout pears."])
    app.ingest([folder])
    [item] = c.get("/api/v1/documents").json()["items"]
    text = c.get(f"/api/v1/documents/{item['ref']}/text").json()
    assert [ch["ordinal"] for ch in text["chunks"]] == list(range(len(text["chunks"])))
    assert {ch["page"] for ch in text["chunks"]} == {1, 2}
    assert all(ch["id"] and "text" in ch and "start_s" in ch and "role" in ch for ch in text["chunks"])


def hostile_message(path: Path) -> Path:
    m = email.message.EmailMessage()
    m["From"] = f'"{XSS}" <evil@example.org>'
    m["To"] = "me@example.org"
    m["Subject"] = f"Invoice {XSS} <img src=x onerror=alert(1)>"
    m["Date"] = "Fri, 03 May 2024 10:00:00 +0000"
    m.set_content(f"Please pay the invoice for the plumber. {XSS}")
    m.add_attachment(b"Attached list: copper pipes and a new boiler valve.", maintype="text", subtype="plain",
                     filename=f"{XSS}.txt")
    path.write_bytes(bytes(m))
    return path


def test_mail_with_attachment_and_hostile_strings_come_back_as_data(app: App, c: TestClient[Any]) -> None:
    folder = inbox(app)
    folder.mkdir(parents=True)
    hostile_message(folder / "invoice.eml")
    app.ingest([folder])
    items = c.get("/api/v1/documents").json()["items"]
    mail = next(i for i in items if i["source"] == "file" and i["kind"] == "mail")
    att = next(i for i in items if i["source"] == "attachment")
    assert att["parent"]["ref"] == mail["ref"]
    r = c.get(f"/api/v1/documents/{mail['ref']}")
    assert r.headers["content-type"].startswith("application/json")
    doc = r.json()
    assert doc["mail"]["subject"] == f"Invoice {XSS} <img src=x onerror=alert(1)>"  # exact text, escaped by JSON
    assert XSS in doc["mail"]["from"]
    assert [a["ref"] for a in doc["attachments"]] == [att["ref"]]
    # the name as the mail parser kept it (its last path part): markup and all, as text
    assert doc["attachments"][0]["name"] == att["name"] == "script>.txt"
    assert c.get(f"/api/v1/documents/{att['ref']}").json()["parent"]["ref"] == mail["ref"]
    # the raw message is served as plain text, never as HTML
    raw = c.get(f"/api/v1/documents/{mail['ref']}/original")
    assert raw.status_code == 200 and raw.headers["content-type"].startswith("text/plain")
    part = c.get(f"/api/v1/documents/{att['ref']}/original")
    assert part.status_code == 200 and b"boiler valve" in part.content
    hits = c.get("/api/v1/search", params={"q": "plumber invoice", "kind": "mail"}).json()["hits"]
    assert hits and XSS in hits[0]["title"]
    # search with markup and quotes in the query is only words
    assert c.get("/api/v1/search", params={"q": XSS + '" OR 1=1 --'}).status_code == 200


def test_meetings_with_summary_times_and_segments(make_app: AppFactory) -> None:
    from test_summary_job import store_meeting

    app = make_app()
    rec = app.settings.data_dir.parent / "standup.wav"
    meeting = store_meeting(app, rec)
    app.summarize([rec])
    with TestClient(create_app(app, app.settings)) as c:
        page = c.get("/api/v1/meetings").json()
        [m] = page["items"]
        assert m["id"] == meeting.id and m["duration_s"] == meeting.meta["duration_s"] and m["summary_ref"]
        assert m["summary_status"] == "ready" and m["video"] is False
        [listed] = [i for i in c.get("/api/v1/documents?kind=meeting").json()["items"]]
        assert listed["duration_s"] == m["duration_s"] and listed["ref"] == m["ref"]
        one = c.get(f"/api/v1/meetings/{m['ref']}").json()
        assert one["segments"] and all(s["start_s"] is not None and s["end_s"] >= s["start_s"]
                                       for s in one["segments"])
        bullets = [b for sec in one["summary"]["sections"] for b in sec["bullets"]]
        assert bullets and all(b["t_start"] is not None for b in bullets)
        assert one["summary"]["method"] == "extractive"
        doc = c.get(f"/api/v1/documents/{m['ref']}").json()
        assert doc["summary_ref"] == m["summary_ref"] and doc["media"]["duration_s"] == m["duration_s"]
        assert c.get(f"/api/v1/documents/{m['summary_ref']}").json()["meeting_ref"] == m["ref"]
        r = c.get(f"/api/v1/meetings/{m['summary_ref']}")
        assert r.status_code == 404  # a summary is not a meeting
        # each transcript line plays from its own time: two sentences of 10 s in a passage of 0-20 s
        [first, *_] = c.get(f"/api/v1/documents/{m['ref']}/text").json()["chunks"]
        assert [ln["start_s"] for ln in first["lines"]] == [0.0, pytest.approx(10.0, abs=1.5)]
        assert [ln["text"] for ln in first["lines"]] == first["text"].split("\n\n")
        html = c.get(f"/meetings/{m['ref']}").text
        assert html.count('class="line"') == sum(len(ch["lines"]) for ch in
                                                  c.get(f"/api/v1/documents/{m['ref']}/text").json()["chunks"])


def test_jobs_status_schema_and_health(app: App, c: TestClient[Any]) -> None:
    upload(c, ("a.txt", b"apples and pears"))
    jobs = c.get("/api/v1/jobs").json()
    assert jobs["counts"]["queued"] == 1 and jobs["queued"][0]["action"] == "ingest"
    st = c.get("/api/v1/status").json()
    assert st["models"]["embedding"]["name"] == app.settings.embed_model
    assert {"index_bytes", "data_bytes", "disk_free_bytes", "watch", "mail_folders", "jobs"} <= set(st)
    schema = c.get("/api/v1/schema/openapi.json").json()
    assert "/api/v1/documents/{ref}/original" in schema["paths"] and "/api/v1/upload" in schema["paths"]
    assert c.get("/api/v1/health").json()["ok"] is True


def test_ask_streams_server_sent_events(tmp_path: Path) -> None:
    from summary_fixtures import ScriptedModel

    from kb.embedding import HashEmbedder
    from kb.settings import load_settings

    settings = load_settings(data_dir=tmp_path / "data", workers=0, summary_llm=False, answer_min_similarity=-1.0)
    app = App(settings, embedder=HashEmbedder(), llm=ScriptedModel(lambda prompt: "The boiler is fixed on Friday [1]."))
    folder = inbox(app)
    folder.mkdir(parents=True)
    (folder / "boiler.txt").write_text("The plumber fixes the boiler on Friday morning.")
    app.ingest([folder])
    with TestClient(create_app(app, app.settings)) as c:
        r = c.get("/api/v1/ask/stream", params={"q": "When is the boiler fixed?"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [(block.split("\n")[0][7:], json.loads(block.split("\n")[1][6:]))
                  for block in r.text.strip().split("\n\n")]
        names = [e for e, _ in events]
        assert names[0] == "passages" and names[-1] == "done" and "answer" in names and "token" in names
        passages = events[0][1]
        assert isinstance(passages, list) and passages and "boiler" in passages[0]["text"]
        answer = dict(events)["answer"]
        assert "Friday" in answer["answer"] and answer["cited"] and answer["passages"]
        assert c.get("/api/v1/ask/stream", params={"q": " "}).status_code == 400
    app.close()


def test_service_files_are_not_reachable_as_static(c: TestClient[Any], app: App) -> None:
    for path in ("/static/../kbapp/app.py", "/static/%2e%2e/%2e%2e/kb/settings.py", "/static/..%2F..%2Fpyproject.toml"):
        r = c.get(path)
        assert r.status_code in (400, 404), path
    assert os.sep + "etc" not in c.get("/api/v1/documents").text

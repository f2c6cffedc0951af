"""The summarize job in a real App (fake embedder, embedded Chroma): a meeting's summary is a searchable document
of kind `summary`, linked to the meeting, queued after the transcript is stored, remade on demand, and
forgotten with the meeting."""

from __future__ import annotations

import hashlib
from pathlib import Path

from summary_fixtures import MEETING, ScriptedModel

from ingest.chunking import Chunk
from ingest.parsing import Parsed
from kb.catalog import DocumentRecord, Link
from kb.embedding import HashEmbedder
from kb.jobs import DONE, Done, Job
from kb.settings import load_settings
from kbapp.app import App
from kbapp.summaries import ACTION, AfterIngest, summary_docs, summary_uri
from retrieval.summary import ACTIONS, Summary


def store_meeting(
    app: App, path: Path, sentences: list[str] = MEETING, seconds: float = 10.0, link: Link | None = None
) -> DocumentRecord:
    """A transcribed recording in the library, as the audio parser and the store would leave it."""
    chunks, pos = [], 0
    for i in range(0, len(sentences), 2):
        text = "\n\n".join(sentences[i : i + 2])
        chunks.append(Chunk(text=text, section=None, char_start=pos, char_end=pos + len(text), t_start=i * seconds,
                            t_end=min(len(sentences), i + 2) * seconds, n_tokens=len(text.split())))
        pos += len(text) + 2
    text = "\n\n".join(sentences)
    parsed = Parsed(kind="meeting", file_type=path.suffix.lstrip("."), title=path.stem, author=None, created_at=None,
                    modified_at=None, meta={"duration_s": len(sentences) * seconds}, text=text, chunks=chunks,
                    parser_version="audio/1+chunker/2")
    h = hashlib.sha256(text.encode()).hexdigest()
    doc_id, _ = app.store.write(job_id=None, content_hash=h, parsed=parsed, links=[link or Link(str(path))])
    doc = app.catalog.document(doc_id)
    assert doc is not None
    return doc


def build(tmp_path: Path, llm: ScriptedModel | None = None) -> App:
    settings = load_settings(data_dir=tmp_path / "data", workers=0, summary_llm=False)
    return App(settings, embedder=HashEmbedder(), llm=llm)


def test_summary_document_is_linked_searchable_and_forgotten_with_its_meeting(tmp_path: Path) -> None:
    app = build(tmp_path)
    try:
        rec = tmp_path / "garden.wav"
        meeting = store_meeting(app, rec)
        state = app.summarize([rec])
        assert state["complete"] and state["outcomes"] == {"extractive": 1}, state

        [doc] = summary_docs(app.catalog, meeting)
        assert (doc.kind, doc.file_type, doc.title) == ("summary", "summary", "Summary: garden")
        assert doc.paths == [summary_uri(str(rec))] and doc.source_types == ["summary"]
        src = app.catalog.source(summary_uri(str(rec)))
        assert src is not None and src.parent_uri == str(rec)
        summary = Summary.from_dict(doc.meta["summary"])
        assert doc.meta["meeting_doc"] == meeting.id and doc.meta["method"] == "extractive"
        assert summary.section(ACTIONS).bullets[0].owner == "Maria"
        text = app.catalog.document_text(doc.id)
        assert text == summary.to_markdown()

        # one chunk per bullet, with the bullet's times; every chunk id of the meeting it cites exists
        chunks = app.catalog.chunks_of(doc.id)
        assert len(chunks) == len(summary.bullets())
        meeting_chunks = {c.id for c in app.catalog.chunks_of(meeting.id)}
        for c, b in zip(chunks, summary.bullets(), strict=True):
            assert (c.t_start, c.t_end) == (b.t_start, b.t_end) and set(b.chunk_ids) <= meeting_chunks
            assert c.section is not None and c.section.startswith("Summary: garden > ")
            assert c.role == "summary"
        hits = app.search("Maria book conference room Friday", k=3, kind="summary")
        assert hits and hits[0]["kind"] == "summary" and "conference room" in hits[0]["text"]
        # unfiltered, the recording's own words come first: the summary repeats them
        assert app.search("Maria will book the conference room by Friday", k=1)[0]["kind"] == "meeting"
        assert hits[0]["t_start"] is not None and hits[0]["section"] == "Summary: garden > Action items"

        assert app.forget([rec]) == 1
        assert app.catalog.source(summary_uri(str(rec))) is None and app.catalog.document(doc.id) is None
        assert not app.search("conference room", k=3, kind="summary")
        assert app.index().count() == 0
    finally:
        app.close()


def test_remade_on_demand_with_the_model_replacing_the_old_summary(tmp_path: Path) -> None:
    model = ScriptedModel()
    app = build(tmp_path, llm=None)
    try:
        rec = tmp_path / "garden.wav"
        meeting = store_meeting(app, rec)
        assert app.summarize([rec])["outcomes"] == {"extractive": 1}
        [old] = summary_docs(app.catalog, meeting)
        app._llm = model  # a model configured since
        state = app.summarize(all_meetings=True)
        assert state["outcomes"] == {"summarized": 1} and model.prompts
        [new] = summary_docs(app.catalog, meeting)
        assert new.id != old.id and app.catalog.document(old.id) is None
        assert new.meta["method"] == "condensed" and new.author == "scripted"
        assert any(b.condensed for b in Summary.from_dict(new.meta["summary"]).bullets())
        assert app.index().count() == app.catalog.chunk_count()
        # the same summary again is rewritten in place, not duplicated
        assert app.summarize([tmp_path])["outcomes"] == {"summarized": 1}
        assert [d.id for d in summary_docs(app.catalog, meeting)] == [new.id]
    finally:
        app.close()


def test_the_summary_moves_with_its_recording(tmp_path: Path) -> None:
    app = build(tmp_path)
    try:
        (tmp_path / "a").mkdir()
        old, new = tmp_path / "a" / "garden.wav", tmp_path / "b" / "garden-2024.wav"
        old.write_bytes(b"RIFF fake audio")
        st = old.stat()
        meeting = store_meeting(app, old, link=Link(str(old), size=st.st_size, mtime_ns=st.st_mtime_ns))
        assert app.summarize([old])["outcomes"] == {"extractive": 1}
        [doc] = summary_docs(app.catalog, meeting)
        (tmp_path / "a").rename(tmp_path / "b")
        old.parent.with_name("b").joinpath("garden.wav").rename(new)
        batch = app.jobs.new_batch("move")
        app.jobs.submit("move", str(old), payload={"to": str(new)}, batch=batch)
        assert app.run_batch(batch)["outcomes"] == {"moved": 1}

        src = app.catalog.source(summary_uri(str(new)))
        assert src is not None and src.parent_uri == str(new) and src.doc_id == doc.id
        assert app.catalog.source(summary_uri(str(old))) is None
        hits = app.search("Maria book conference room", k=1, kind="summary")
        assert hits and hits[0]["path"] == summary_uri(str(new))
        assert app.forget([new]) == 1 and app.catalog.document(doc.id) is None
    finally:
        app.close()


def test_paths_without_recordings_are_reported(tmp_path: Path) -> None:
    app = build(tmp_path)
    try:
        state = app.summarize([tmp_path / "nothing-here"])
        assert state["jobs"] == 0 and state["complete"]
        assert state["info"]["not_meetings"] == [str(tmp_path / "nothing-here")]
    finally:
        app.close()


def test_a_stored_meeting_gets_its_summary_queued_in_the_ingest_batch(tmp_path: Path) -> None:
    app = build(tmp_path)
    try:
        rec = tmp_path / "garden.wav"
        batch = app.jobs.new_batch("ingest")
        app.jobs.submit("ingest", str(rec), batch=batch)
        job = app.jobs.claim(["fast"])
        assert job is not None

        def ingest(j: Job, ctx: object) -> Done:
            store_meeting(app, rec)
            return Done("added")

        hooked = AfterIngest(ingest, app.catalog, app.jobs)
        assert hooked(job, None) == Done("added")
        app.jobs.complete(job.id, "added")
        summary_job = app.jobs.by_key(f"summary:{app.catalog.source(str(rec)).doc_id}")  # type: ignore[union-attr]
        assert summary_job is not None and summary_job.action == ACTION and summary_job.lane == "slow"
        state = app.run_batch(batch)
        assert state["outcomes"] == {"added": 1, "extractive": 1}, state

        # ingesting it again (unchanged) queues nothing: its summary is current
        again = app.jobs.submit("ingest", str(rec))
        job2 = app.jobs.claim(["fast"])
        assert job2 is not None and job2.id == again
        assert AfterIngest(lambda j, c: Done("unchanged"), app.catalog, app.jobs)(job2, None) == Done("unchanged")
        after = app.jobs.by_key(summary_job.key)
        assert after is not None and after.state == DONE
    finally:
        app.close()


def test_api_route_queues_the_summaries(tmp_path: Path) -> None:
    from litestar.testing import TestClient

    from server.api import create_api

    app = build(tmp_path)
    try:
        rec = tmp_path / "garden.wav"
        store_meeting(app, rec)
        with TestClient(app=create_api(app)) as client:
            r = client.post("/api/v1/summarize", json={"paths": [str(rec)]})
            assert r.status_code == 202
            batch = r.json()["batch"]
        assert app.run_batch(batch)["outcomes"] == {"extractive": 1}
    finally:
        app.close()


def test_cli_needs_paths_or_all(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from kbapp.cli import main

    out = CliRunner().invoke(main, ["--data-dir", str(tmp_path / "data"), "summarize"])
    assert out.exit_code == 2 and "--all" in out.output


def test_reading_a_file_again_keeps_the_parts_that_are_not_attachments(tmp_path: Path) -> None:
    """A changed recording is stored anew; its summary (a child source, but no attachment) is not forgotten for it:
    the summary job that follows replaces it."""
    app = build(tmp_path)
    try:
        f = tmp_path / "notes.txt"
        f.write_text("The roof needs repairs before winter.")
        assert app.ingest([f])["added"] == 1
        doc_id = app.catalog.source(str(f)).doc_id  # type: ignore[union-attr]
        assert doc_id is not None
        app.catalog.link_source(summary_uri(str(f)), "summary", doc_id, content_hash="x", size=None, mtime_ns=None,
                                status="indexed", parent_uri=str(f))
        f.write_text("The roof needs repairs before winter, and the gutters too.")
        report = app.ingest([f])
        assert report["updated"] == 1 and report["removed"] == 0, report
        assert app.catalog.source(summary_uri(str(f))) is not None
    finally:
        app.close()

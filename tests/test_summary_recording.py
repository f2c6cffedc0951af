"""End to end with a real recording (espeak-ng speech, Whisper tiny.en, the real embedding model): a dropped
meeting is transcribed, then summarized by the job that follows, and the summary is found by search."""

from __future__ import annotations

from pathlib import Path

import pytest
from media_fixtures import speak

from kbapp.app import App
from kbapp.summaries import summary_docs
from retrieval.summary import ACTIONS, DECISIONS, Summary

pytestmark = pytest.mark.slow  # real Whisper and embedding models

SPEECH = (
    "Welcome to the garden committee meeting. The greenhouse roof was damaged in the storm last winter. "
    "We decided to replace the greenhouse roof in April. Maria will book the conference room by Friday. "
    "Who is going to pay for the new compost bins?"
)


def test_a_recording_gets_a_summary_after_its_transcript(app: App, tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("meetings")
    rec = speak(SPEECH, Path(folder) / "garden.wav")
    report = app.ingest([folder])  # the summary job joins the ingest batch: done when this returns
    assert report["added"] == 1 and report["failed"] == 0, report
    src = app.catalog.source(str(rec))
    assert src is not None and src.doc_id is not None
    meeting = app.catalog.document(src.doc_id)
    assert meeting is not None and meeting.kind == "meeting"

    [doc] = summary_docs(app.catalog, meeting)
    summary = Summary.from_dict(doc.meta["summary"])
    assert doc.meta["method"] == "extractive"  # no language model in this App
    actions = summary.section(ACTIONS).bullets
    assert any("conference room" in b.text.lower() and b.due and "friday" in b.due.lower() for b in actions), actions
    assert any("roof" in b.text.lower() for b in summary.section(DECISIONS).bullets)
    duration = float(meeting.meta["duration_s"])
    for b in summary.bullets():
        assert b.t_start is not None and b.t_end is not None and 0 <= b.t_start < b.t_end <= duration + 1
    hits = app.search("who books the conference room", k=3, kind="summary")
    assert hits and hits[0]["document_id"] == doc.id and hits[0]["t_start"] is not None

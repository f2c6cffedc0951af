"""Idempotent, crash-safe updates against a real Chroma store (fast fake embedder)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import AppFactory
from fixtures import write_bad_inputs

from kb.app import App
from kb.catalog import DOC_INDEXED
from kb.embedding import HashEmbedder
from kb.errors import IndexMismatchError


def consistent(app: App) -> None:
    """The catalog and Chroma agree exactly, and no document is left in between states."""
    assert app.index().all_ids() == app.catalog.all_chunk_ids()
    stats = app.catalog.stats()
    assert set(stats["documents_by_status"]) <= {"indexed", "empty"}


def texts(folder: Path, n: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"note{i}.txt"
        p.write_text(f"Note {i}\n\nThe subject of note {i} is topic{i} and nothing else at all.\n")
        out.append(p)
    return out


def test_ingest_then_rescan_embeds_nothing(make_app: AppFactory, tmp_path: Path) -> None:
    emb = HashEmbedder()
    app = make_app(embedder=emb)
    texts(tmp_path / "in")
    r1 = app.ingestor.ingest([tmp_path / "in"])
    assert (r1.added, r1.unchanged, r1.failed) == (3, 0, [])
    embedded = emb.embedded
    r2 = app.ingestor.ingest([tmp_path / "in"])
    assert (r2.added, r2.unchanged) == (0, 3)
    # touching a file changes its time but not its content: still nothing re-embedded
    os.utime(tmp_path / "in" / "note0.txt", (1, 1))
    r3 = app.ingestor.ingest([tmp_path / "in"])
    assert r3.unchanged == 3 and emb.embedded == embedded
    consistent(app)


def test_changed_file_replaces_its_chunks(make_app: AppFactory, tmp_path: Path) -> None:
    app = make_app()
    (p,) = texts(tmp_path / "in", 1)
    app.ingestor.ingest([p])
    old = app.catalog.source(str(p))
    assert old is not None and old.doc_id is not None
    old_chunks = {c.id for c in app.catalog.chunks_of(old.doc_id)}
    p.write_text("Completely new words about zeppelins and airships.\n")
    r = app.ingestor.ingest([p])
    assert r.updated == 1
    new = app.catalog.source(str(p))
    assert new is not None and new.doc_id != old.doc_id
    assert app.catalog.document(old.doc_id) is None
    assert not old_chunks & app.index().all_ids()
    hits = app.searcher.search("zeppelins airships", k=5)
    assert hits and all("topic0" not in h.chunk.text for h in hits)
    versions = app.catalog._query("SELECT count(*) n FROM versions")[0]["n"]
    assert versions == 2
    consistent(app)


def test_same_content_two_paths_embedded_once(make_app: AppFactory, tmp_path: Path) -> None:
    emb = HashEmbedder()
    app = make_app(embedder=emb)
    a, b = tmp_path / "a.txt", tmp_path / "sub" / "b.txt"
    b.parent.mkdir()
    for p in (a, b):
        p.write_text("Identical content about lighthouses and lenses.\n")
    r = app.ingestor.ingest([tmp_path])
    assert r.added == 2 and emb.embedded == 1
    doc = app.catalog.document_by_hash(app.catalog.source(str(a)).content_hash)  # type: ignore[union-attr]
    assert doc is not None
    assert sorted(app.catalog.document(doc.id).paths) == sorted([str(a), str(b)])  # type: ignore[union-attr]
    # a later third copy is linked, not embedded
    (tmp_path / "c.txt").write_text("Identical content about lighthouses and lenses.\n")
    app.ingestor.ingest([tmp_path])
    assert emb.embedded == 1
    # forgetting one path keeps the document for the others
    assert app.ingestor.forget([a]) == 1
    assert app.catalog.document(doc.id) is not None
    consistent(app)


def test_forget_and_mirror_remove_chunks_and_vectors(make_app: AppFactory, tmp_path: Path) -> None:
    app = make_app()
    files = texts(tmp_path / "in", 3)
    app.ingestor.ingest([tmp_path / "in"])
    assert app.ingestor.forget([files[0]]) == 1
    assert app.catalog.source(str(files[0])) is None
    files[1].unlink()
    r = app.ingestor.ingest([tmp_path / "in"])
    assert r.removed == 1 and r.added == 1  # the forgotten file is still in the folder: back it comes
    assert app.catalog.stats()["documents"] == 2 == len({c.split("-")[0] for c in app.index().all_ids()})
    assert app.ingestor.forget([tmp_path / "in"]) == 2
    assert app.catalog.chunk_count() == 0 and app.index().count() == 0
    consistent(app)


def test_bad_input_recorded_and_run_goes_on(make_app: AppFactory, tmp_path: Path) -> None:
    app = make_app(max_file_mb=0.1)
    bad = write_bad_inputs(tmp_path / "bad")
    r = app.ingestor.ingest([tmp_path / "bad"])
    errors = dict(r.failed)
    expect = {
        "empty": "empty",
        "truncated_pdf": "PDF",
        "corrupt_pdf": "PDF",
        "encrypted_pdf": "encrypted PDF",
        "truncated_docx": "damaged or truncated DOCX",
        "encrypted_office": "encrypted",
        "encrypted_mail": "encrypted e-mail",
        "binary_txt": "binary content",
        "unsupported": "unsupported file type .exe",
        "too_big": "limit (setting max_file_mb)",
        "bad_json": "invalid JSON",
        "self_loop": "symbolic link loop",
        "dangling": "broken symbolic link",
    }
    for key, words in expect.items():
        assert words in errors.get(str(bad[key]), ""), (key, errors.get(str(bad[key])))
    ok = {str(bad["fine"]), str(bad["latin1"]), str(tmp_path / "bad" / "good.pdf")}
    assert ok <= {s.uri for s in app.catalog.all_sources() if s.status == "indexed"}
    hits = app.searcher.search("crème brûlée", k=3)
    assert any("brûlée" in h.chunk.text for h in hits)
    # failures are visible in the status, and a re-run neither retries nor loses them
    assert app.catalog.stats()["failed"] == len(expect)
    r2 = app.ingestor.ingest([tmp_path / "bad"])
    assert r2.added == 0 and app.catalog.stats()["failed"] == len(expect)
    consistent(app)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(make_app: AppFactory, tmp_path: Path) -> None:
    app = make_app()
    p = tmp_path / "secret.txt"
    p.write_text("hidden")
    p.chmod(0)
    r = app.ingestor.ingest([tmp_path])
    assert "permission denied" in dict(r.failed)[str(p)]


def test_file_turning_bad_drops_old_text(make_app: AppFactory, tmp_path: Path) -> None:
    app = make_app()
    p = tmp_path / "doc.json"
    p.write_text('{"x": "walrus"}')
    app.ingestor.ingest([p])
    assert app.searcher.search("walrus")
    p.write_text('{"x": ')
    r = app.ingestor.ingest([p])
    assert r.failed and not app.searcher.search("walrus")
    consistent(app)


def test_model_change_needs_reindex(make_app: AppFactory, tmp_path: Path) -> None:
    data = tmp_path / "data"
    app = make_app(embedder=HashEmbedder(name="model-a"), data_dir=data)
    texts(tmp_path / "in", 2)
    app.ingestor.ingest([tmp_path / "in"])
    app.close()
    other = make_app(embedder=HashEmbedder(dim=32, name="model-b"), data_dir=data)
    with pytest.raises(IndexMismatchError, match="kb reindex"):
        other.searcher.search("topic1")
    n = other.reindexer().reindex()
    assert n == other.catalog.chunk_count() > 0
    fresh = make_app(embedder=HashEmbedder(dim=32, name="model-b"), data_dir=data)
    assert fresh.searcher.search("topic1")[0].chunk.text.count("topic1")
    assert fresh.catalog.get_meta("embed_model") == "model-b"
    consistent(fresh)


def test_recovery_finishes_interrupted_documents(make_app: AppFactory, tmp_path: Path) -> None:
    """Simulate crashes between each write step and check the next run repairs them."""
    app = make_app()
    files = texts(tmp_path / "in", 2)
    app.ingestor.ingest([tmp_path / "in"])
    doc_id = app.catalog.source(str(files[0])).doc_id  # type: ignore[union-attr]
    # crash after catalog write, before vectors: document 'indexing', vectors missing
    ids = [c.id for c in app.catalog.chunks_of(doc_id)]  # type: ignore[arg-type]
    app.index().delete_ids(ids)
    app.catalog.set_document_status(doc_id, "indexing")  # type: ignore[arg-type]
    # crash during a delete: an orphan vector and a 'deleting' document
    app.index().upsert(["orphan-00001"], app.embedder.embed(["x"]), [{"doc_id": 999}])
    app.catalog.set_meta("ingest_running", "1")
    app.ingestor.ingest([tmp_path / "in"])
    assert app.catalog.document(doc_id).status == DOC_INDEXED  # type: ignore[arg-type, union-attr]
    consistent(app)


def test_documents_without_dates_get_the_file_time(make_app: AppFactory, tmp_path: Path) -> None:
    app = make_app()
    (p,) = texts(tmp_path / "in", 1)
    os.utime(p, (1_700_000_000, 1_700_000_000))
    app.ingestor.ingest([p])
    doc = app.catalog.document(app.catalog.source(str(p)).doc_id)  # type: ignore[arg-type, union-attr]
    assert doc is not None and doc.modified_at is not None and doc.modified_at.startswith("2023-11-14")


def test_metadata_filters(make_app: AppFactory, tmp_path: Path) -> None:
    app = make_app()
    (tmp_path / "a.md").write_text("# Otters\n\nOtters hold hands while sleeping.\n")
    (tmp_path / "b.txt").write_text("Otters are members of the weasel family.\n")
    os.utime(tmp_path / "b.txt", (1_000_000_000, 1_000_000_000))
    app.ingestor.ingest([tmp_path])
    only_md = app.searcher.search("otters", where={"file_type": "md"})
    assert {h.document.file_type for h in only_md} == {"md"}
    old = app.searcher.search("otters", where={"modified_ts": {"$lt": 1_100_000_000}})
    assert [Path(h.document.paths[0]).name for h in old] == ["b.txt"]

"""Per-source, idempotent, crash-safe ingest through the job queue, against a real Chroma store (fast fake
embedder, parsing in-process)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from conftest import AppFactory
from fixtures import write_bad_inputs

from kb.catalog import DOC_INDEXED
from kb.embedding import HashEmbedder
from kb.errors import IndexMismatchError
from kbapp.app import App


def consistent(app: App) -> None:
    """The catalog and Chroma agree exactly, no document is left in between states, no job is in flight."""
    assert app.index().all_ids() == app.catalog.all_chunk_ids()
    stats = app.catalog.stats()
    assert set(stats["documents_by_status"]) <= {"indexed", "empty"}
    assert not set(app.jobs.counts()) & {"running"}


def hits(app: App, query: str, k: int = 5, **filters: str) -> list[dict]:  # type: ignore[type-arg]
    return app.search(query, k=k, **filters)


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
    r1 = app.ingest([tmp_path / "in"])
    assert (r1['added'], r1['unchanged'], r1['failed']) == (3, 0, 0)
    embedded = emb.embedded
    r2 = app.ingest([tmp_path / "in"])
    assert (r2['added'], r2['unchanged']) == (0, 3), r2
    # touching a file changes its time but not its content: still nothing re-embedded
    os.utime(tmp_path / "in" / "note0.txt", (1, 1))
    r3 = app.ingest([tmp_path / "in"])
    assert r3['unchanged'] == 3 and emb.embedded == embedded
    consistent(app)


def test_changed_file_replaces_its_chunks(make_app: AppFactory, tmp_path: Path) -> None:
    app = make_app()
    (p,) = texts(tmp_path / "in", 1)
    app.ingest([p])
    old = app.catalog.source(str(p))
    assert old is not None and old.doc_id is not None
    old_chunks = {c.id for c in app.catalog.chunks_of(old.doc_id)}
    p.write_text("Completely new words about zeppelins and airships.\n")
    r = app.ingest([p])
    assert r['updated'] == 1
    new = app.catalog.source(str(p))
    assert new is not None and new.doc_id != old.doc_id
    assert app.catalog.document(old.doc_id) is None
    assert not old_chunks & app.index().all_ids()
    found = hits(app, "zeppelins airships")
    assert found and all("topic0" not in h["text"] for h in found)
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
    r = app.ingest([tmp_path])
    assert r['added'] == 2 and emb.embedded == 1
    doc = app.catalog.document_by_hash(app.catalog.source(str(a)).content_hash)  # type: ignore[union-attr]
    assert doc is not None
    assert sorted(app.catalog.document(doc.id).paths) == sorted([str(a), str(b)])  # type: ignore[union-attr]
    # a later third copy is linked, not embedded
    (tmp_path / "c.txt").write_text("Identical content about lighthouses and lenses.\n")
    app.ingest([tmp_path])
    assert emb.embedded == 1
    # forgetting one path keeps the document for the others
    assert app.forget([a]) == 1
    assert app.catalog.document(doc.id) is not None
    consistent(app)


def test_forget_and_mirror_remove_chunks_and_vectors(make_app: AppFactory, tmp_path: Path) -> None:
    app = make_app()
    files = texts(tmp_path / "in", 3)
    app.ingest([tmp_path / "in"])
    assert app.forget([files[0]]) == 1
    assert app.catalog.source(str(files[0])) is None
    files[1].unlink()
    r = app.ingest([tmp_path / "in"])
    # the forgotten file is still in the folder: it stays out until it changes or is named
    assert r['removed'] == 1 and r['added'] == 0 and r['forgotten'] == 1
    assert app.catalog.stats()["documents"] == 1
    assert app.ingest([files[0]])["added"] == 1
    assert app.catalog.stats()["documents"] == 2 == len({c.split("-")[0] for c in app.index().all_ids()})
    assert app.forget([tmp_path / "in"]) == 2
    assert app.catalog.chunk_count() == 0 and app.index().count() == 0
    consistent(app)


def failures(report: dict) -> dict[str, str]:  # type: ignore[type-arg]
    return {f["path"]: f["error"] for f in report["failures"]}


def test_bad_input_recorded_and_run_goes_on(make_app: AppFactory, tmp_path: Path) -> None:
    app = make_app(max_file_mb=0.1)
    bad = write_bad_inputs(tmp_path / "bad")
    r = app.ingest([tmp_path / "bad"])
    errors = failures(r)
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
    assert any("brûlée" in h["text"] for h in hits(app, "crème brûlée", k=3))
    # failures are visible in the status; a re-run of the same bytes reports them again, never as unchanged
    assert app.catalog.stats()["failed"] == len(expect)
    r2 = app.ingest([tmp_path / "bad"])
    assert r2["added"] == 0 and r2["failed"] == len(expect) and app.catalog.stats()["failed"] == len(expect)
    assert all("unchanged since" in f["error"] for f in r2["failures"] if "symbolic link" not in f["error"])
    consistent(app)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(make_app: AppFactory, tmp_path: Path) -> None:
    app = make_app()
    p = tmp_path / "secret.txt"
    p.write_text("hidden")
    p.chmod(0)
    r = app.ingest([tmp_path])
    assert "permission denied" in failures(r)[str(p)]


def test_file_turning_bad_keeps_its_previous_version(make_app: AppFactory, tmp_path: Path) -> None:
    """A transient or lasting failure never destroys the good version: it stays searchable, error beside it."""
    app = make_app()
    p = tmp_path / "doc.json"
    p.write_text('{"x": "walrus"}')
    app.ingest([p])
    assert hits(app, "walrus")
    p.write_text('{"x": ')
    r = app.ingest([p])
    assert r["failed"] == 1 and "invalid JSON" in failures(r)[str(p)]
    assert any("walrus" in h["text"] for h in hits(app, "walrus"))
    src = app.catalog.source(str(p))
    assert src is not None and src.kept_previous and "invalid JSON" in (src.error or "")
    status = app.status()
    assert status["failures"][0]["kept_previous"] is True
    p.write_text('{"x": "narwhal"}')  # fixed: the new version replaces the old one
    r = app.ingest([p])
    assert r["updated"] == 1 and hits(app, "narwhal") and not any("walrus" in h["text"] for h in hits(app, "walrus"))
    consistent(app)


def test_model_change_needs_reindex(make_app: AppFactory, tmp_path: Path) -> None:
    data = tmp_path / "data"
    app = make_app(embedder=HashEmbedder(name="model-a"), data_dir=data)
    texts(tmp_path / "in", 2)
    app.ingest([tmp_path / "in"])
    old_collection = app.catalog.get_meta("collection")
    app.close()
    other = make_app(embedder=HashEmbedder(dim=32, name="model-b"), data_dir=data)
    with pytest.raises(IndexMismatchError, match="kb reindex"):
        other.search("topic1")
    state = other.reindex()
    assert state["outcomes"] == {"reindexed": 1}
    new_collection = other.catalog.get_meta("collection")
    assert new_collection != old_collection and other.catalog.get_meta("reindex_target") is None
    assert old_collection not in other.vectors.names()  # swapped, then the old one dropped
    assert other.search("topic1")[0]["text"].count("topic1")  # the running app picked up the new handle
    fresh = make_app(embedder=HashEmbedder(dim=32, name="model-b"), data_dir=data)
    assert fresh.search("topic1")[0]["text"].count("topic1")
    assert fresh.catalog.get_meta("embed_model") == "model-b"
    consistent(fresh)


def test_interrupted_reindex_resumes_and_search_keeps_working(make_app: AppFactory, tmp_path: Path) -> None:
    app = make_app()
    texts(tmp_path / "in", 6)
    app.ingest([tmp_path / "in"])
    before = app.catalog.get_meta("collection")
    # a rebuild that stopped halfway: target recorded and partly filled, its job still queued
    from ingest.reindex import next_collection_name

    target = next_collection_name(app.catalog)
    app.catalog.set_meta("reindex_target", target)
    half = app.vectors.collection(target, app.embedder.name, app.embedder.dim)
    chunks = [c for b in app.catalog.iter_chunk_batches(3) for c in b][:3]
    vectors = app.embedder.embed([c.text for c in chunks])
    half.upsert([c.id for c in chunks], vectors, [{"doc_id": c.doc_id} for c in chunks])
    app.jobs.submit("reindex", key="reindex", lane="maint")
    assert app.search("topic3")[0]["text"].count("topic3")  # still answered from the old collection
    app.recover()
    batch = app.jobs.new_batch("reindex")
    with app.jobs.transaction() as db:
        app.jobs.enqueue(db, "reindex", key="reindex", lane="maint", batch=batch)
    app.run_batch(batch)
    assert app.catalog.get_meta("collection") == target != before
    assert app.search("topic3")[0]["text"].count("topic3")
    consistent(app)


def test_reindex_job_gone_rolls_the_rebuild_back(make_app: AppFactory, tmp_path: Path) -> None:
    app = make_app()
    texts(tmp_path / "in", 2)
    app.ingest([tmp_path / "in"])
    from ingest.reindex import next_collection_name

    target = next_collection_name(app.catalog)
    app.catalog.set_meta("reindex_target", target)
    app.vectors.collection(target, app.embedder.name, app.embedder.dim)
    app.recover()
    assert app.catalog.get_meta("reindex_target") is None and target not in app.vectors.names()
    consistent(app)


def test_recovery_reconciles_both_directions(make_app: AppFactory, tmp_path: Path) -> None:
    """Vectors the catalog does not know are removed; catalog chunks without a vector get one back."""
    app = make_app()
    files = texts(tmp_path / "in", 3)
    app.ingest([tmp_path / "in"])
    doc_id = app.catalog.source(str(files[0])).doc_id  # type: ignore[union-attr]
    ids = [c.id for c in app.catalog.chunks_of(doc_id)]  # type: ignore[arg-type]
    app.index().delete_ids(ids)  # e.g. an interrupted rebuild by an older version
    app.index().upsert(["orphan-00001"], app.embedder.embed(["x"]), [{"doc_id": 999}])
    # a document half-written by a job that no longer exists, and one being deleted
    other = app.catalog.source(str(files[1])).doc_id  # type: ignore[union-attr]
    app.catalog.execute("UPDATE documents SET status='deleting' WHERE id=?", (other,))
    report = app.recover()
    assert report.orphan_vectors == 1 and report.missing_vectors == len(ids) and report.purged == 1
    assert app.jobs.by_key("repair") is not None
    app.start_workers()
    try:
        deadline = time.monotonic() + 30
        while app.jobs.by_key("repair").state != "done" and time.monotonic() < deadline:  # type: ignore[union-attr]
            time.sleep(0.05)
    finally:
        app.stop_workers()
    assert app.catalog.document(doc_id).status == DOC_INDEXED  # type: ignore[arg-type, union-attr]
    consistent(app)


def test_a_job_killed_mid_write_resumes_without_parsing_again(make_app: AppFactory, tmp_path: Path) -> None:
    """kill -9 between writing the chunks and their vectors: the job runs again and embeds only what is missing."""
    emb = HashEmbedder()
    app = make_app(embedder=emb)
    (p,) = texts(tmp_path / "in", 1)
    job_id = app.jobs.submit("ingest", str(p))
    job = app.jobs.claim(["fast"])
    assert job is not None and job.id == job_id
    from ingest.handlers import file_hash
    from ingest.parsers.base import Source, no_progress

    h = file_hash(p)
    parsed = app.inline_parser.parse(Source.from_path(p), no_progress)
    from kb.catalog import ChunkRecord, chunk_id

    records = [ChunkRecord(chunk_id(h, i), 0, i, c.text, c.section, char_start=c.char_start, char_end=c.char_end)
               for i, c in enumerate(parsed.chunks)]  # type: ignore[union-attr]
    app.catalog.claim_content(h, job_id)
    app.catalog.insert_document(
        content_hash=h, kind="document", file_type="txt", title="t", author=None, created_at=None,
        modified_at=None, size=1, meta={}, text=parsed.text, chunks=records, claim_job=job_id,  # type: ignore[union-attr]
    )
    # the process dies here; at the next start the job is queued again and recovery keeps its document
    report = app.recover()
    assert report.requeued == 1 and report.purged == 0
    before = emb.embedded
    batch = app.jobs.new_batch("ingest")
    with app.jobs.transaction() as db:
        app.jobs.enqueue(db, "ingest", str(p), batch=batch)
    app.run_batch(batch)
    assert emb.embedded - before == len(records)
    assert app.catalog.source(str(p)).status == "indexed"  # type: ignore[union-attr]
    consistent(app)


def test_same_content_claimed_once(make_app: AppFactory, tmp_path: Path) -> None:
    """Two jobs meeting the same bytes: the second waits for the first's claim, then links, never fails."""
    app = make_app()
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    for p in (a, b):
        p.write_text("Identical words about the harbour crane.\n")
    ja = app.jobs.submit("ingest", str(a))
    jb = app.jobs.submit("ingest", str(b))
    from ingest.handlers import file_hash

    h = file_hash(a)
    app.jobs.claim(["fast"])  # job a is running (in another worker, say) and holds the claim
    assert app.catalog.claim_content(h, ja) is None
    assert app.catalog.claim_content(h, jb) == ja
    app.jobs.defer(ja, 0)
    app.catalog.release_claims(ja)
    batch = app.jobs.new_batch("ingest")
    with app.jobs.transaction() as db:
        for p in (a, b):
            app.jobs.enqueue(db, "ingest", str(p), batch=batch)
    state = app.run_batch(batch)
    assert state["outcomes"] == {"added": 2}
    assert app.catalog.stats()["documents"] == 1
    consistent(app)


def test_emptied_mount_point_does_not_wipe_the_library(make_app: AppFactory, tmp_path: Path) -> None:
    app = make_app(mass_delete_min=5, mass_delete_ratio=0.5)
    folder = tmp_path / "mnt"
    texts(folder, 8)
    app.ingest([folder])
    for p in folder.iterdir():  # the disk is unmounted: the mount point is an empty folder
        p.unlink()
    r = app.ingest([folder])
    assert r["held"] == 8 and r["removed"] == 0
    assert app.catalog.stats()["documents"] == 8 and hits(app, "topic3")
    assert app.status()["held"] == 8 and app.held()["held"] == 8
    assert app.held(confirm=False) == {"discarded": 8}
    assert app.catalog.stats()["documents"] == 8
    # a small deletion is not held
    texts(folder, 8)
    app.ingest([folder])
    (folder / "note0.txt").unlink()
    assert app.ingest([folder])["removed"] == 1
    # confirmed, a held removal runs
    for p in folder.iterdir():
        p.unlink()
    app.ingest([folder])
    released = app.held(confirm=True)
    assert released["released"] == 7
    assert app.run_batch(released["batch"])["outcomes"] == {"removed": 7}
    assert app.catalog.stats()["documents"] == 0
    consistent(app)


def test_file_names_of_any_bytes(make_app: AppFactory, tmp_path: Path) -> None:
    app = make_app()
    folder = tmp_path / "in"
    folder.mkdir()
    raw = os.fsencode(folder) + b"/caf\xe9 \x1b[31mred\nline.txt"
    with open(raw, "wb") as f:
        f.write(b"Words about a latin-1 named file and its espresso.\n")
    r = app.ingest([folder])
    assert r["added"] == 1, r
    found = hits(app, "espresso")
    # shown safely: the undecodable byte and the control characters escaped, never sent to a terminal raw
    assert found and found[0]["path"] == str(folder) + "/caf\\xe9 \\x1b[31mred\\x0aline.txt"
    assert found[0]["title"] == "caf\\xe9 \\x1b[31mred\\x0aline"
    assert app.forget([os.fsdecode(raw)]) == 1
    assert app.catalog.stats()["documents"] == 0
    consistent(app)


def test_documents_without_dates_get_the_file_time(make_app: AppFactory, tmp_path: Path) -> None:
    app = make_app()
    (p,) = texts(tmp_path / "in", 1)
    os.utime(p, (1_700_000_000, 1_700_000_000))
    app.ingest([p])
    doc = app.catalog.document(app.catalog.source(str(p)).doc_id)  # type: ignore[arg-type, union-attr]
    assert doc is not None and doc.modified_at is not None and doc.modified_at.startswith("2023-11-14")


def test_metadata_filters_and_refresh(make_app: AppFactory, tmp_path: Path) -> None:
    app = make_app()
    (tmp_path / "a.md").write_text("# Otters\n\nOtters hold hands while sleeping.\n")
    (tmp_path / "b.txt").write_text("Otters are members of the weasel family.\n")
    os.utime(tmp_path / "b.txt", (1_000_000_000, 1_000_000_000))
    app.ingest([tmp_path])
    only_md = app.searcher.search("otters", where={"file_type": "md"})
    assert {h.document.file_type for h in only_md} == {"md"}
    assert {h["file_type"] for h in hits(app, "otters", file_type=".MD")} == {"md"}
    old = app.searcher.search("otters", where={"modified_ts": {"$lt": 1_100_000_000}})
    assert [Path(h.document.paths[0]).name for h in old] == ["b.txt"]
    # the same content at a second path; the first path is forgotten: Chroma's copy of the path follows
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("Otters are members of the weasel family.\n")
    app.ingest([tmp_path / "sub" / "c.txt"])
    app.forget([tmp_path / "b.txt"])
    found = app.searcher.search("weasel family", where={"path": str(tmp_path / "sub" / "c.txt")})
    assert found and found[0].document.paths == [str(tmp_path / "sub" / "c.txt")]


def test_chunk_limit_is_a_recorded_warning(make_app: AppFactory, tmp_path: Path) -> None:
    app = make_app(max_chunks=3, chunk_tokens=32)
    p = tmp_path / "long.txt"
    p.write_text("\n\n".join(f"Paragraph {i} " + "word " * 40 for i in range(20)))
    r = app.ingest([p])
    assert r["added"] == 1
    src = app.catalog.source(str(p))
    assert src is not None and src.warning and "max_chunks" in src.warning
    assert app.catalog.chunk_count() == 3
    assert any("max_chunks" in w["warning"] for w in app.status()["warnings"])


def test_an_owner_starts_despite_a_model_change_so_reindex_can_run(make_app: AppFactory, tmp_path: Path) -> None:
    """After the embedding model setting changes, the owner must still start (to run the reindex that fixes
    it); meanwhile ingest and search say what to do, and nothing of the old vectors is mixed."""
    from kb.lock import try_lock
    from kbapp.service import Owner

    data = tmp_path / "data"
    app = make_app(embedder=HashEmbedder(name="model-a"), data_dir=data)
    texts(tmp_path / "in", 2)
    app.ingest([tmp_path / "in"])
    app.catalog.set_meta("owner_clean", "0")  # as after a crash: recovery runs its full check too
    app.close()
    other = make_app(embedder=HashEmbedder(dim=32, name="model-b"), data_dir=data)
    lock = try_lock(data)
    assert lock is not None
    owner = Owner(other, lock, serve=False)
    try:
        with pytest.raises(IndexMismatchError, match="kb reindex"):
            other.search("topic1")
        (tmp_path / "in" / "new.txt").write_text("A new note about topic9.\n")
        r = other.ingest([tmp_path / "in" / "new.txt"])
        assert r["failed"] == 1 and "kb reindex" in r["failures"][0]["error"], r
        other.reindex()
        assert other.search("topic1")[0]["text"].count("topic1")
        # the failed file, retried, goes in with the new model
        assert other.run_batch(other.retry()["batch"])["outcomes"] == {"added": 1}
        assert other.ingest([tmp_path / "in"])["unchanged"] == 3
    finally:
        owner.close()
    consistent(other)

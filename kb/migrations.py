"""Ordered, recorded schema migrations for the catalog, run at start-up.

Each migration runs once, in order, inside one transaction with the row that records it, so a crash
mid-migration leaves the catalog at the previous version. A catalog recorded at a version newer than this
code knows is refused: an older kb must not write a schema it does not understand.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from kb.errors import CatalogError


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[sqlite3.Connection], None]


def _script(sql: str) -> Callable[[sqlite3.Connection], None]:
    def run(db: sqlite3.Connection) -> None:
        for statement in _statements(sql):
            db.execute(statement)

    return run


def _statements(sql: str) -> list[str]:
    """Split a script at semicolons that end a complete statement (triggers contain inner ones)."""
    out: list[str] = []
    buf = ""
    for part in sql.split(";"):
        buf += part + ";"
        if sqlite3.complete_statement(buf):
            if buf.strip(" \n;"):
                out.append(buf.strip())
            buf = ""
    return out


# The foundation's schema, exactly as it shipped (schema_version 1 in the meta table).
_BASELINE = """
CREATE TABLE IF NOT EXISTS meta(
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS documents(
    id INTEGER PRIMARY KEY,
    content_hash TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    file_type TEXT NOT NULL,
    title TEXT,
    author TEXT,
    created_at TEXT,
    modified_at TEXT,
    size INTEGER,
    status TEXT NOT NULL,
    chunk_count INTEGER NOT NULL DEFAULT 0,
    meta TEXT NOT NULL DEFAULT '{}',
    added_at REAL NOT NULL,
    indexed_at REAL
);
CREATE INDEX IF NOT EXISTS documents_status ON documents(status);
CREATE TABLE IF NOT EXISTS document_text(
    doc_id INTEGER PRIMARY KEY REFERENCES documents(id) ON DELETE CASCADE,
    text BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS sources(
    id INTEGER PRIMARY KEY,
    uri TEXT NOT NULL UNIQUE,
    source_type TEXT NOT NULL,
    doc_id INTEGER REFERENCES documents(id),
    content_hash TEXT,
    size INTEGER,
    mtime_ns INTEGER,
    status TEXT NOT NULL,
    error TEXT,
    first_seen REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sources_doc ON sources(doc_id);
CREATE INDEX IF NOT EXISTS sources_status ON sources(status, updated_at);
CREATE TABLE IF NOT EXISTS versions(
    id INTEGER PRIMARY KEY,
    source_id INTEGER NOT NULL REFERENCES sources(id) ON DELETE CASCADE,
    content_hash TEXT NOT NULL,
    seen_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS versions_source ON versions(source_id);
CREATE TABLE IF NOT EXISTS chunks(
    id TEXT PRIMARY KEY,
    doc_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    text TEXT NOT NULL,
    section TEXT,
    page INTEGER,
    page_end INTEGER,
    char_start INTEGER NOT NULL,
    char_end INTEGER NOT NULL,
    t_start REAL,
    t_end REAL,
    ocr INTEGER NOT NULL DEFAULT 0,
    n_tokens INTEGER NOT NULL DEFAULT 0,
    UNIQUE(doc_id, seq)
);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(
    text, section, content='chunks', content_rowid='rowid', tokenize='porter unicode61'
);
CREATE TRIGGER IF NOT EXISTS chunks_ai AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts(rowid, text, section) VALUES (new.rowid, new.text, coalesce(new.section, ''));
END;
CREATE TRIGGER IF NOT EXISTS chunks_ad AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, text, section)
        VALUES ('delete', old.rowid, old.text, coalesce(old.section, ''));
END;
"""

# The durable job queue, content claims, and what the service core needs on sources and documents.
_JOBS = """
CREATE TABLE jobs(
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,           -- one job per source (or per singleton task): never queued twice
    action TEXT NOT NULL,               -- ingest, forget, reindex, repair, ...
    uri TEXT,                           -- the source it is about
    payload TEXT NOT NULL DEFAULT '{}',
    lane TEXT NOT NULL DEFAULT 'fast',  -- fast, slow (long media, big files), maint (reindex, repair)
    priority INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,                -- queued, running, done, failed, held
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL DEFAULT 5,
    run_after REAL NOT NULL,
    lease_owner TEXT,
    lease_until REAL,
    heartbeat_at REAL,
    rerun_action TEXT,                  -- asked for again while running: queued again when it ends
    last_error TEXT,
    outcome TEXT,                       -- added, updated, unchanged, empty, removed, failed, ...
    stage TEXT,
    done REAL,
    total REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
CREATE INDEX jobs_claim ON jobs(state, lane, run_after, priority);
CREATE INDEX jobs_uri ON jobs(uri);
CREATE TABLE batches(
    id TEXT PRIMARY KEY,
    action TEXT NOT NULL,
    info TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL
);
CREATE TABLE batch_jobs(
    batch_id TEXT NOT NULL REFERENCES batches(id) ON DELETE CASCADE,
    job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    PRIMARY KEY(batch_id, job_id)
);
CREATE INDEX batch_jobs_job ON batch_jobs(job_id);
CREATE TABLE content_claims(
    content_hash TEXT PRIMARY KEY,
    job_id INTEGER NOT NULL,
    claimed_at REAL NOT NULL
);
DROP TABLE IF EXISTS progress;
ALTER TABLE sources ADD COLUMN warning TEXT;
ALTER TABLE sources ADD COLUMN parent_uri TEXT;
ALTER TABLE documents ADD COLUMN pipeline_version TEXT;
ALTER TABLE documents ADD COLUMN claim_job INTEGER;
"""


def _instance(db: sqlite3.Connection) -> None:
    """Give the instance an id and its own Chroma collection name (two instances may share a server).

    A catalog that already has vectors keeps the collection they are in until the next `kb reindex`.
    """
    def meta(key: str) -> str | None:
        row = db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    instance = meta("instance_id") or uuid.uuid4().hex[:12]
    db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('instance_id', ?)", (instance,))
    if meta("collection") is None:
        has_chunks = db.execute("SELECT 1 FROM chunks LIMIT 1").fetchone() is not None
        name = "kb_chunks" if has_chunks else f"kb_{instance}_1"
        db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('collection', ?)", (name,))


# Each request's own view of a job: a file asked for again while its job runs gets a second run, and
# each request is told the outcome of the run it asked for.
_BATCH_OUTCOMES = """
ALTER TABLE batch_jobs ADD COLUMN settled INTEGER NOT NULL DEFAULT 0;
ALTER TABLE batch_jobs ADD COLUMN outcome TEXT;
ALTER TABLE batch_jobs ADD COLUMN error TEXT;
ALTER TABLE batch_jobs ADD COLUMN rerun INTEGER NOT NULL DEFAULT 0;
"""

# Watchers: folder tags, IMAP sync state, and chunk roles (quoted replies and signatures weigh less).
_WATCHERS = """
ALTER TABLE sources ADD COLUMN tag TEXT;
CREATE INDEX sources_parent ON sources(parent_uri);
CREATE TABLE mail_folders(
    account TEXT NOT NULL,
    folder TEXT NOT NULL,
    uidvalidity INTEGER,               -- the server's UIDVALIDITY when last_uid was recorded
    last_uid INTEGER NOT NULL DEFAULT 0,  -- every message up to here has its job queued (same transaction)
    last_sync REAL,
    last_error TEXT,
    PRIMARY KEY(account, folder)
);
ALTER TABLE chunks ADD COLUMN role TEXT;
"""

# Search that behaves: the chunk word index folds all diacritics (remove_diacritics 2: "café" finds "cafe" and
# back); a trigram index over chunk text matches Chinese and Japanese (no spaces between words) and symbols
# the word tokenizer drops ("C++"); a document-level word index (title + whole text) gives each document one
# lexical score, which ranks better than its best chunk's (SciFact train nDCG@10, see bench/retrieval.py).
_SEARCH = """
DROP TRIGGER IF EXISTS chunks_ai;
DROP TRIGGER IF EXISTS chunks_ad;
DROP TABLE IF EXISTS chunks_fts;
CREATE VIRTUAL TABLE chunks_fts USING fts5(
    text, section, content='chunks', content_rowid='rowid', tokenize='porter unicode61 remove_diacritics 2'
);
CREATE VIRTUAL TABLE chunks_tri USING fts5(
    text, content='chunks', content_rowid='rowid', tokenize='trigram'
);
CREATE TRIGGER chunks_ai AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts(rowid, text, section) VALUES (new.rowid, new.text, coalesce(new.section, ''));
    INSERT INTO chunks_tri(rowid, text) VALUES (new.rowid, new.text);
END;
CREATE TRIGGER chunks_ad AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, text, section)
        VALUES ('delete', old.rowid, old.text, coalesce(old.section, ''));
    INSERT INTO chunks_tri(chunks_tri, rowid, text) VALUES ('delete', old.rowid, old.text);
END;
INSERT INTO chunks_fts(chunks_fts) VALUES ('rebuild');
INSERT INTO chunks_tri(chunks_tri) VALUES ('rebuild');
-- document_text is compressed, so the document index keeps its own copy (rowid = document id), written by
-- the catalog with the document and removed with it.
CREATE VIRTUAL TABLE docs_fts USING fts5(
    title, text, tokenize='porter unicode61 remove_diacritics 2'
);
CREATE TRIGGER documents_fts_ad AFTER DELETE ON documents BEGIN
    DELETE FROM docs_fts WHERE rowid = old.id;
END;
"""


def _search(db: sqlite3.Connection) -> None:
    _script(_SEARCH)(db)
    rows = db.execute(
        "SELECT d.id, d.title, t.text FROM documents d JOIN document_text t ON t.doc_id = d.id"
    ).fetchall()
    for doc_id, title, blob in rows:
        text = zlib.decompress(blob).decode("utf-8", "replace")
        db.execute("INSERT INTO docs_fts(rowid, title, text) VALUES (?,?,?)", (doc_id, title or "", text))



# Mail out: the durable outbox (every e-mail is written here before it is sent, under an idempotency key)
# and the schedules (the digest's last run, so a service that was down at 8:00 sends it once on return).
_OUTBOX = """
CREATE TABLE outbox(
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,           -- idempotency key: meeting:<content hash>, digest:<period end>, ...
    kind TEXT NOT NULL,                 -- meeting, digest, test
    message_id TEXT NOT NULL,           -- derived from the key: a duplicate after a crash is recognisable
    subject TEXT NOT NULL,
    recipients TEXT NOT NULL,           -- JSON list of envelope addresses, from the settings at queue time
    message BLOB NOT NULL,              -- the whole message as sent (RFC 5322, CRLF)
    state TEXT NOT NULL,                -- queued, sending, sent, failed
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    lease_until REAL,                   -- while sending: after this, the sender is presumed dead
    last_error TEXT,
    reply TEXT,                         -- the server's final answer
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    sent_at REAL
);
CREATE INDEX outbox_due ON outbox(state, next_attempt);
CREATE TABLE schedules(
    name TEXT PRIMARY KEY,              -- digest
    last_fire REAL,                     -- the scheduled time of the last run done (or skipped)
    covered_until REAL,                 -- what arrived up to here was in a digest already
    last_outcome TEXT,                  -- queued, skipped, manual
    updated_at REAL NOT NULL
);
"""

# Forgotten files: a file someone forgot (web UI, `kb forget`) while it stays in a watched folder would come
# back at the next scan; its uri and stat are kept here so it stays out until its bytes change.
_FORGOTTEN = """
CREATE TABLE forgotten(
    uri TEXT PRIMARY KEY,
    size INTEGER,
    mtime_ns INTEGER,
    forgotten_at REAL NOT NULL
);
"""

MIGRATIONS: list[Migration] = [
    Migration(1, "baseline", _script(_BASELINE)),
    Migration(2, "jobs, claims, source warnings, pipeline versions", _script(_JOBS)),
    Migration(3, "instance id and collection name", _instance),
    Migration(4, "per-request job outcomes", _script(_BATCH_OUTCOMES)),
    Migration(5, "folder tags, mail sync state, chunk roles", _script(_WATCHERS)),
    Migration(6, "search indexes: folded words, trigrams, whole documents", _search),
    Migration(7, "mail out: outbox and schedules", _script(_OUTBOX)),
    Migration(8, "forgotten files stay out of the library", _script(_FORGOTTEN)),
]
LATEST = MIGRATIONS[-1].version


def migrate(db: sqlite3.Connection) -> list[int]:
    """Bring the catalog to LATEST; returns the versions applied. `db` is in autocommit mode."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations("
        "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
    )
    current = _current(db)
    if current > LATEST:
        raise CatalogError(
            f"the catalog was written by a newer kb (schema version {current}; this kb knows up to {LATEST}): "
            "upgrade kb, or point it at another data directory"
        )
    applied = []
    for m in MIGRATIONS:
        if m.version <= current:
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            if _current(db) >= m.version:  # another process migrated meanwhile
                db.execute("ROLLBACK")
                continue
            m.apply(db)
            db.execute(
                "INSERT INTO schema_migrations(version, name, applied_at) VALUES (?,?,?)",
                (m.version, m.name, time.time()),
            )
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)", (str(m.version),))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        applied.append(m.version)
    return applied


def _current(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT max(version) FROM schema_migrations").fetchone()
    if row and row[0] is not None:
        return int(row[0])
    # A catalog from before recorded migrations: the foundation wrote schema_version 1 into meta.
    has_meta = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
    if has_meta:
        v = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if v is not None:
            db.execute(
                "INSERT OR IGNORE INTO schema_migrations(version, name, applied_at) VALUES (1, 'baseline', ?)",
                (time.time(),),
            )
            return int(v[0])
    return 0

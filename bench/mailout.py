"""Mail out: how long a digest takes to compose for a busy period, and how fast the outbox delivers.

    PYTHONPATH=. .venv/bin/python -m bench.mailout --docs 2000 --messages 200

A catalog with `--docs` documents that arrived in the digest's period (files in 4 tagged folders and mail, plus
50 failed sources), then: the digest's composition (the catalog queries and both templates), the size of the
message, and `--messages` messages queued and delivered through the outbox to a local aiosmtpd server (one
SMTP conversation each, as the service does). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--messages", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    from smtp_server import SmtpServer

    from kb.catalog import Catalog, Link
    from kb.settings import load_settings
    from kbapp.mailout import MailOut

    tmp = Path(tempfile.mkdtemp(prefix="kb-bench-mailout-"))
    server = SmtpServer().start()
    try:
        settings = load_settings(data_dir=tmp / "data", smtp=server.settings(), digest_cron="0 8 * * *",
                                 mail_timezone="Europe/Berlin", base_url="https://kb.example.org")
        catalog = Catalog(settings.catalog_path)
        start = time.time() - 1
        for i in range(args.docs):
            mail = i % 5 == 4
            h = f"{i:064x}"
            doc_id = catalog.insert_document(
                content_hash=h, kind="mail" if mail else "document", file_type="eml" if mail else "pdf",
                title=f"Quarterly report {i} <draft>", author="Grace <grace@example.org>" if mail else None,
                created_at=None, modified_at=None, size=1000,
                meta={"from": "Grace <grace@example.org>"} if mail else {},
                text=f"report {i}", chunks=[],
            )
            uri = f"imap://work/INBOX;UIDVALIDITY=1/;UID={i}" if mail else f"file:///srv/folder{i % 4}/report-{i}.pdf"
            link = Link(uri, "mail" if mail else "file", tag=None if mail else f"tag{i % 4}")
            catalog.finish_document(doc_id, [link], h)
        for i in range(50):
            catalog.record_failure(f"file:///srv/folder0/broken-{i}.pdf", "file", "damaged PDF", size=1, mtime_ns=1)
        end = time.time() + 1
        mo = MailOut(settings, catalog)

        compose = []
        size = 0
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            digest = mo.composer.collect(start, end)
            mail_out = mo.composer.message("bench", "digest", mo.composer.digest(digest))
            compose.append(time.perf_counter() - t0)
            size = len(mail_out.message)

        t0 = time.perf_counter()
        for i in range(args.messages):
            mo.outbox.put(mo.composer.message(f"bench:{i}", "test", mo.composer.digest(mo.composer.collect(end, end))))
        queue_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        sent = mo.outbox.deliver_due(mo.transport, limit=args.messages)
        deliver_s = time.perf_counter() - t0
        assert all(e.state == "sent" for e in sent) and len(server.received) == args.messages
        catalog.close()
    finally:
        server.stop()
    print(json.dumps({
        "docs_in_period": args.docs, "failed_sources": 50,
        "digest_compose_ms_median": round(1000 * statistics.median(compose), 1),
        "digest_message_bytes": size,
        "messages": args.messages,
        "queue_per_message_ms": round(1000 * queue_s / args.messages, 2),
        "deliver_messages_per_s": round(args.messages / deliver_s, 1),
    }, indent=2))


if __name__ == "__main__":
    main()

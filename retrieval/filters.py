"""Search filters people use (kind, file type, folder tag, source, date range), as SQL and as Chroma's where.

Both sides of hybrid search apply the same filters before fusion; the catalog is the authority (a dense hit
is checked against the SQL form too, because Chroma's copy holds one tag per chunk and no document date).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Filters:
    kind: str | None = None
    file_type: str | None = None
    tag: str | None = None
    source_type: str | None = None  # "file" or "mail"
    after: str | None = None  # ISO date (YYYY-MM-DD or longer); the document's date, inclusive
    before: str | None = None  # ISO date, inclusive

    def __bool__(self) -> bool:
        return any((self.kind, self.file_type, self.tag, self.source_type, self.after, self.before))

    @property
    def dated(self) -> bool:
        return bool(self.after or self.before)

    def sql(self, alias: str = "d") -> tuple[str, list[Any]]:
        """Conditions on the documents table (alias `alias`), ' AND '-prefixed, and their parameters."""
        conds: list[str] = [f"{alias}.status = 'indexed'"]
        params: list[Any] = []
        if self.kind:
            conds.append(f"{alias}.kind = ?")
            params.append(self.kind)
        if self.file_type:
            conds.append(f"{alias}.file_type = ?")
            params.append(self.file_type.lower().lstrip("."))
        if self.tag:
            conds.append(f"EXISTS (SELECT 1 FROM sources s WHERE s.doc_id = {alias}.id AND s.tag = ?)")
            params.append(self.tag)
        if self.source_type:
            conds.append(f"EXISTS (SELECT 1 FROM sources s WHERE s.doc_id = {alias}.id AND s.source_type = ?)")
            params.append(self.source_type)
        # A document's date: when it was written (a message's Date, a file's creation), else last modified,
        # else when it came in. ISO strings compare as dates on their first ten characters.
        date = (f"substr(coalesce({alias}.created_at, {alias}.modified_at,"
                f" datetime({alias}.added_at, 'unixepoch')), 1, 10)")
        if self.after:
            conds.append(f"{date} >= ?")
            params.append(self.after[:10])
        if self.before:
            conds.append(f"{date} <= ?")
            params.append(self.before[:10])
        return " AND ".join(conds), params

    def chroma(self) -> dict[str, Any] | None:
        """The part Chroma can apply itself (dates are checked in the catalog afterwards)."""
        parts: list[dict[str, Any]] = []
        if self.tag:
            parts.append({"tag": self.tag})
        if self.file_type:
            parts.append({"file_type": self.file_type.lower().lstrip(".")})
        if self.kind:
            parts.append({"kind": self.kind})
        if self.source_type:
            parts.append({"source_type": self.source_type})
        return None if not parts else parts[0] if len(parts) == 1 else {"$and": parts}

"""A batch's final state as the summary people read (CLI, tests, later the web UI)."""

from __future__ import annotations

from typing import Any

from kb.paths import display


def summarize(state: dict[str, Any]) -> dict[str, Any]:
    """A batch's final state as the summary people read: added / updated / unchanged / failed."""
    o = dict(state["outcomes"])
    info = state.get("info", {})
    failures = [{"path": display(f["uri"] or ""), "error": f["error"], "retry_at": f.get("retry_at")}
                for f in state["failures"]]
    failures += [{"path": e["path"], "error": e["error"], "retry_at": None} for e in info.get("errors", [])]
    failures += [{"path": e["path"], "error": f"{e['error']} (unchanged since; `kb retry` tries again)",
                  "retry_at": None} for e in info.get("still_failing", [])]
    return {
        "batch": state["id"],
        "files": info.get("files", state["jobs"]),
        "added": o.get("added", 0),
        "updated": o.get("updated", 0),
        "unchanged": info.get("unchanged", 0) + o.get("unchanged", 0),
        "empty": o.get("empty", 0),
        "forgotten": info.get("forgotten", 0) + o.get("forgotten", 0),  # forgotten by someone, unchanged since
        "removed": o.get("removed", 0),
        "moved": o.get("moved", 0),  # renamed or moved files whose documents were kept as they were
        "failed": len(failures),
        "held": info.get("held", 0),
        "held_roots": info.get("held_roots", []),
        "failures": failures,
        "complete": state["complete"],
    }

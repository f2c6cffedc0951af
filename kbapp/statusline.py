"""The live status line of `kb watch`: queue, last event, errors and the watchers' health, in one line.

On a terminal the line is redrawn in place every second; into a log (not a terminal) a line is written only
when something changed, and at most every `log_every_s`, so a long-running service does not flood its log.
"""

from __future__ import annotations

import shutil
import time
from typing import Any, TextIO

from kb.paths import display


def _clock(ts: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) if ts else "-"


def render(summary: dict[str, Any]) -> str:
    """One line from App.live_summary(): what is queued and running, what happened last, what is wrong."""
    parts = [f"queue {summary.get('queued', 0)}"]
    if summary.get("running"):
        parts.append(f"working {summary['running']}")
    last = summary.get("last")
    if last:
        what = f"{last.get('outcome') or ''} {display(last.get('path') or '')}".strip()
        parts.append(f"last {_clock(last.get('at'))} {what}".rstrip())
    if summary.get("failed"):
        parts.append(f"{summary['failed']} failed (kb status)")
    watch = summary.get("watch") or []
    bad = [h for h in watch if h.get("state") == "unhealthy"]
    if bad:
        parts.extend(f"{h['kind']} {display(h['name'])}: {h.get('last_error') or 'unhealthy'}" for h in bad)
    elif watch:
        folders = sum(h["kind"] == "folder" for h in watch)
        mail = sum(h["kind"] == "mail" for h in watch)
        mailboxes = f", {mail} mail account{'s' * (mail != 1)}" if mail else ""
        parts.append(f"watching {folders} folder{'s' * (folders != 1)}{mailboxes}: ok")
    return " · ".join(parts)


class LiveLine:
    """Draws render(summary) to a stream: in place on a terminal, as changed lines into a log."""

    def __init__(self, out: TextIO, *, log_every_s: float = 30.0) -> None:
        self.out = out
        self.tty = out.isatty()
        self.log_every_s = log_every_s
        self._last_text = ""
        self._last_at = 0.0

    def show(self, summary: dict[str, Any]) -> None:
        text = render(summary)
        if self.tty:
            width = max(20, shutil.get_terminal_size((100, 20)).columns - 1)
            self.out.write("\r\x1b[2K" + (text if len(text) <= width else text[: width - 1] + "…"))
            self.out.flush()
            return
        now = time.monotonic()
        if text != self._last_text and now - self._last_at >= self.log_every_s:
            self.out.write(text + "\n")
            self.out.flush()
            self._last_text, self._last_at = text, now

    def clear(self) -> None:
        """Leave the terminal on a fresh line (before other output, and at exit)."""
        if self.tty:
            self.out.write("\r\x1b[2K")
            self.out.flush()

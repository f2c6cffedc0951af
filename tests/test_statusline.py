"""`kb watch`'s live status line: what it says, and how it writes to a terminal and to a log."""

from __future__ import annotations

import io

from kbapp.statusline import LiveLine, render


def test_the_line_names_the_queue_the_last_event_failures_and_unhealthy_watchers() -> None:
    summary = {
        "queued": 3, "running": 1, "failed": 2,
        "last": {"at": 0.0, "outcome": "added", "path": "/inbox/report\x1b[31m.pdf"},
        "watch": [
            {"kind": "folder", "name": "/inbox", "state": "ok"},
            {"kind": "mail", "name": "work", "state": "unhealthy", "last_error": "login failed for user me"},
        ],
    }
    line = render(summary)
    assert line.startswith("queue 3 · working 1 · last ")
    assert "added /inbox/report\\x1b[31m.pdf" in line  # a hostile name cannot drive the terminal
    assert "2 failed (kb status)" in line and "mail work: login failed for user me" in line
    summary["watch"][1]["state"] = "ok"
    assert render(summary).endswith("watching 1 folder, 1 mail account: ok")


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_a_terminal_is_redrawn_in_place_a_log_gets_changed_lines_only() -> None:
    tty = _Stream(True)
    live = LiveLine(tty)
    live.show({"queued": 1})
    live.show({"queued": 0})
    assert tty.getvalue().count("\r\x1b[2K") == 2 and "\n" not in tty.getvalue()
    log = _Stream(False)
    live = LiveLine(log, log_every_s=0)
    for q in (1, 1, 1, 2):
        live.show({"queued": q})
    assert log.getvalue().splitlines() == ["queue 1", "queue 2"]

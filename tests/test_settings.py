"""Settings: defaults, kb.toml, KB_* variables, and clear messages for bad values."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kb.errors import ConfigError
from kb.settings import load_settings


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert s.data_dir == Path("data") and s.inbox_paths == [Path("data/inbox")]
    assert s.embed_model == "all-MiniLM-L6-v2" and s.whisper_model == "tiny.en"


def test_toml_then_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "kb.toml").write_text('data_dir = "/srv/kb"\nworkers = 3\ninbox = ["/a", "/b"]\n')
    s = load_settings()
    assert s.data_dir == Path("/srv/kb") and s.workers == 3 and s.inbox_paths == [Path("/a"), Path("/b")]
    monkeypatch.setenv("KB_WORKERS", "2")
    monkeypatch.setenv("KB_MAX_FILE_MB", "5")
    s = load_settings()
    assert s.workers == 2 and s.max_file_bytes == 5 * 1024 * 1024
    monkeypatch.setenv("KB_CONFIG", str(tmp_path / "missing.toml"))
    assert load_settings().data_dir == Path("data")


@pytest.mark.parametrize(
    "var,value,needle",
    [
        ("KB_WORKERS", "many", "KB_WORKERS"),
        ("KB_MAX_FILE_MB", "-1", "KB_MAX_FILE_MB"),
        ("KB_WHISPER_MODEL", "huge", "KB_WHISPER_MODEL"),
        ("KB_OCR_LANGUAGES", "eng;rm -rf", "KB_OCR_LANGUAGES"),
        ("KB_CHROMA_URL", "localhost:8000", "KB_CHROMA_URL"),
    ],
)
def test_bad_values_name_the_setting(monkeypatch: pytest.MonkeyPatch, var: str, value: str, needle: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=needle):
        load_settings()


def test_unknown_toml_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "kb.toml").write_text("wrokers = 2\n")
    with pytest.raises(ConfigError, match="wrokers"):
        load_settings()


def test_one_writer_per_data_dir(tmp_path: Path) -> None:
    import os

    from kb.lock import holder, try_lock

    first = try_lock(tmp_path)
    assert first is not None and holder(tmp_path) == os.getpid()
    assert try_lock(tmp_path) is None  # another owner: the caller becomes a client or waits
    first.release()
    again = try_lock(tmp_path)  # released
    assert again is not None
    again.release()


def test_socket_path_fits_and_is_private(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    s = load_settings(data_dir=deep)
    assert len(os.fsencode(s.socket_path)) < 108  # the Unix socket limit
    assert load_settings(data_dir=tmp_path).socket_path.parent.name == ".run"


def test_watched_folders_with_tags_and_mail_accounts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "kb.toml").write_text(
        'inbox = ["/a", {path = "/b/scans", tag = "scans", mode = "poll"}]\n'
        f'[[mail]]\nname = "work"\nhost = "127.0.0.1"\nsecurity = "none"\nusername = "me"\n'
        f'password_file = "{tmp_path / "pw"}"\n'
    )
    s = load_settings()
    assert s.inbox_paths == [Path("/a"), Path("/b/scans")] and s.inbox[1].mode == "poll"
    assert s.folder_tag(Path("/b/scans/x/y.pdf")) == "scans" and s.folder_tag(Path("/a/z.txt")) is None
    acct = s.mail[0]
    assert acct.port == 143 and acct.folders == ["INBOX"] and acct.password is not None
    assert acct.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s) and "s3cret" not in str(s.model_dump())


def test_plain_imap_only_to_loopback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KB_MAIL", '[{"name": "x", "host": "mail.example.org", "security": "none", '
                       '"username": "u", "password_env": "PW"}]')
    monkeypatch.setenv("PW", "p")
    with pytest.raises(ConfigError, match="clear text"):
        load_settings()
    monkeypatch.setenv("KB_MAIL", '[{"name": "x", "host": "mail.example.org", "username": "u", '
                       '"password_env": "MISSING_PW"}]')
    with pytest.raises(ConfigError, match="MISSING_PW"):
        load_settings()

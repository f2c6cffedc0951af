"""Ingest errors. Each message is shown to the user against the file, so it says what went wrong."""

from kb.errors import KbError


class IngestError(KbError):
    """A file could not be ingested; recorded against it, never fatal to the run."""


class UnsupportedType(IngestError):
    """No parser handles this kind of file."""


class FileTooLarge(IngestError):
    """The file exceeds the max_file_mb setting."""


class EmptyFile(IngestError):
    """The file has no content at all."""


class EncryptedFile(IngestError):
    """The file is password protected."""


class CorruptFile(IngestError):
    """The file is damaged, truncated, or not what its extension says."""


class ParserCrashed(IngestError):
    """The parser process died or timed out on this file."""

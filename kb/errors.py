"""Core exception hierarchy; the CLI and HTTP edges translate these into messages and exit codes."""


class KbError(Exception):
    """Base class for every error kb raises on purpose."""


class ConfigError(KbError):
    """A setting has a bad value; the message names the setting."""


class ModelMissingError(KbError):
    """A model package is not installed; the message names the package."""


class IndexMismatchError(KbError):
    """The vector index was built with another embedding model."""


class CatalogError(KbError):
    """The catalog cannot be opened or is inconsistent."""


class LanguageModelError(KbError):
    """The answer model failed: it cannot load, its server does not answer, or it refused the request."""

"""kb core: settings, the catalog and vector index, model loading, the CLI."""

__version__ = "0.1.0"

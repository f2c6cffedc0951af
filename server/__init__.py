"""Web UI and JSON API (Litestar): not built yet."""

"""Folder and IMAP watchers: detect changes and enqueue; not built yet."""

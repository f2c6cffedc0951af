"""Ingestion: parsers (documents, OCR, audio), chunking, embedding, and the worker that writes the index."""

"""Retrieval: hybrid search over the index; later, answers with citations, summaries and digests."""

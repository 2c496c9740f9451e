"""cnnkit.settings: one reading of each CNNKIT_* variable, the same for every consumer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cnnkit import settings
from cnnkit.data.datasets import cache_dir, default_data_dir, downloads_allowed
from cnnkit.models import pretrained


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "yes", "on", " True "])
def test_every_spelling_of_offline_blocks_dataset_and_weight_downloads(monkeypatch, value: str) -> None:
    monkeypatch.setenv("CNNKIT_OFFLINE", value)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert settings.offline()
    assert not downloads_allowed(True)
    assert pretrained._offline()  # weights read the same variable the same way (they once did not)


@pytest.mark.parametrize("value", ["", "0", "false", "no"])
def test_other_values_allow_downloads(monkeypatch, value: str) -> None:
    monkeypatch.setenv("CNNKIT_OFFLINE", value)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert not settings.offline() and downloads_allowed(True) and not pretrained._offline()
    assert not downloads_allowed(False)  # --no-download still wins


def test_cache_and_data_folders(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CNNKIT_CACHE_DIR", raising=False)
    monkeypatch.delenv("CNNKIT_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "cnnkit" and default_data_dir() == cache_dir() / "datasets"
    monkeypatch.setenv("CNNKIT_CACHE_DIR", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache" and default_data_dir() == tmp_path / "cache" / "datasets"
    monkeypatch.setenv("CNNKIT_DATA_DIR", str(tmp_path / "data"))
    assert default_data_dir() == tmp_path / "data"


def test_trusted_code_entries(monkeypatch) -> None:
    monkeypatch.setenv("CNNKIT_TRUST_CODE", os.pathsep.join(["a.py", " ", "pkg.mod"]))
    assert settings.trusted_code() == ("a.py", "pkg.mod")


def test_only_the_settings_module_reads_cnnkit_variables() -> None:
    src = Path(settings.__file__).parent
    readers = sorted(str(p.relative_to(src)) for p in src.rglob("*.py")
                     if "environ" in (text := p.read_text()) and '"CNNKIT_' in text)  # fmt: skip
    assert readers == ["settings.py"], readers


@pytest.mark.parametrize(("name", "words"), [("tv:resnet18", "torch hub cache"),
                                             ("timm:resnet18", "Hugging Face cache")])  # fmt: skip
def test_offline_refuses_weight_downloads_before_any_is_attempted(monkeypatch, tmp_path: Path, name: str,
                                                                  words: str) -> None:  # fmt: skip
    monkeypatch.setenv("CNNKIT_OFFLINE", "true")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty hub cache: the file would be downloaded
    monkeypatch.setattr(pretrained, "_hf_cached_file", lambda repo: None)

    def no_network(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(pretrained, "_reachable", no_network)
    monkeypatch.setattr("socket.create_connection", no_network)
    monkeypatch.setattr("torch.hub.load_state_dict_from_url", no_network)
    monkeypatch.setattr("timm.create_model", no_network)

    with pytest.raises(pretrained.CnnkitError, match=f"no pretrained weights for {name}") as refused:
        pretrained.find_weights(name)
    assert words in str(refused.value) and "CNNKIT_OFFLINE=true" in str(refused.value)

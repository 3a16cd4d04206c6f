"""Checkpoint I/O in the Hugging Face GPT-2 layout: ``config.json`` + ``model.safetensors``.

Only safetensors are read, so loading a file can never run code (no unpickling).
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import GPTConfig

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


def load_checkpoint(name_or_dir: str | Path) -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    """Read a checkpoint into a config and a state dict with this package's parameter names."""
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
    try:
        raw = load_file(weights_path)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{weights_path} is not a readable safetensors file: {e}") from None
    return config, _from_hf_state(raw, config, weights_path)


def _from_hf_state(raw: dict[str, torch.Tensor], config: GPTConfig, where: Path) -> dict[str, torch.Tensor]:
    """HF names (with or without ``transformer.``) and Conv1D layout -> our names and layout."""
    state = {}
    for key, t in raw.items():
        if key.endswith(_IGNORED) or key == "lm_head.weight":  # buffers; the head is tied to wte
            continue
        name = key if key.startswith("transformer.") else f"transformer.{key}"
        state[name] = t.t() if name.endswith(_TRANSPOSED) else t
    if "transformer.wte.weight" in state:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    from .model import GPT2  # the expected names and shapes come from the model itself

    with torch.device("meta"):
        expected = {k: v.shape for k, v in GPT2(config).state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(s)}" for k, s in expected.items()
             if k in state and state[k].shape != s]
    if missing or unexpected or wrong:
        parts = [f"missing {missing[:5]}" if missing else "", f"unexpected {unexpected[:5]}" if unexpected else "",
                 f"wrong shapes {wrong[:5]}" if wrong else ""]
        raise CheckpointError(f"{where} does not match its config.json: " + "; ".join(p for p in parts if p))
    return state


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


def write_dir_atomically(dest: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a new sibling directory ``.NAME.tmp-*``, then rename it over ``dest``.

    A process killed mid-write leaves that temporary directory behind; each call first removes the stale
    ones of the same target (``_remove_stale_temps``: their writer, recorded inside while it writes, is a
    process of this machine that no longer runs, or they are untouched for ``STALE_TEMP_S``), and puts
    back a ``dest`` that a call killed mid-swap had set aside (``restore_interrupted_save``).
    """
    dest = Path(dest).expanduser().resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    restore_interrupted_save(dest)
    _remove_stale_temps(dest)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(dest), dir=dest.parent))
    try:
        (tmp / _WRITER_FILE).write_text(json.dumps(_writer()))
        write(tmp)
        (tmp / _WRITER_FILE).unlink(missing_ok=True)  # bookkeeping, not part of the result (a nested save
        # into ``tmp`` swaps the directory and may have dropped it already)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a checkpoint is meant to be shared
        _replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


STALE_TEMP_S = 3600  # a save's temporary directory untouched this long is abandoned, whoever wrote it
_WRITER_FILE = ".writer.json"  # inside a temporary directory while it is written: {"host", "pid"}


def _temp_prefix(out: Path) -> str:
    return f".{out.name}.tmp-"


def _writer() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _pid_running(pid: int) -> bool:
    """Whether a process with this id exists on this machine (POSIX; elsewhere: assume it does)."""
    if os.name != "posix":  # on Windows os.kill(pid, 0) would send CTRL_C_EVENT, not probe the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, as another user's process
        return True
    return True


def _newest_mtime(path: Path) -> float:
    """The latest modification time of a directory and its direct entries (a save writes into it)."""
    times = [path.stat().st_mtime]
    for entry in path.iterdir():
        with contextlib.suppress(OSError):  # removed meanwhile
            times.append(entry.stat().st_mtime)
    return max(times)


def _is_stale(tmp: Path, now: float) -> bool:
    """A temporary directory another save left behind: untouched for ``STALE_TEMP_S``, or written by
    a process of this machine that has exited. A directory on a shared disk written from another host
    only goes by age: its PID means nothing here."""
    try:
        if now - _newest_mtime(tmp) > STALE_TEMP_S:
            return True
        writer = json.loads((tmp / _WRITER_FILE).read_text())
        return writer["host"] == socket.gethostname() and not _pid_running(int(writer["pid"]))
    except (OSError, ValueError, KeyError, TypeError):  # no (or a half-written) record: only age counts
        return False


def _remove_stale_temps(out: Path) -> None:
    """Remove ``out``'s stale temporary siblings (``.NAME.tmp-*``) left by killed saves."""
    now = time.time()
    for tmp in out.parent.glob(f"{glob.escape(_temp_prefix(out))}*"):
        if tmp.is_dir() and not tmp.is_symlink() and _is_stale(tmp, now):
            log.info("removing %s, left behind by an interrupted save", tmp)
            shutil.rmtree(tmp, ignore_errors=True)


def _aside_prefix(out: Path) -> str:
    return f".{out.name}.old-"


def _replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``. An existing ``dst`` is renamed aside (``.NAME.old-PID``) first and removed
    after. A process killed between those two renames leaves no ``dst``, only the complete old checkpoint
    aside, which ``restore_interrupted_save`` puts back (saving and loading ``dst`` call it)."""
    if not dst.exists():
        os.replace(src, dst)
        return
    old = dst.with_name(f"{_aside_prefix(dst)}{os.getpid()}")
    os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def restore_interrupted_save(out: str | Path) -> bool:
    """If ``out`` is missing because a save was killed mid-swap, rename the checkpoint it had set aside
    (the newest complete ``.NAME.old-*``) back to ``out``. Returns whether it did."""
    out = Path(out)
    if out.exists() or not out.parent.is_dir():
        return False
    asides = [p for p in out.parent.glob(f"{glob.escape(_aside_prefix(out))}*")
              if (p / CONFIG_FILE).is_file() and (p / WEIGHTS_FILE).is_file()]
    for old in sorted(asides, key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            os.replace(old, out)
        except OSError:  # another process got there first
            continue
        log.warning("restored %s, set aside by a save that did not finish", out)
        return True
    return False

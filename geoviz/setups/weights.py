"""A user's own weights, read safely: safetensors, or a PyTorch state_dict with ``weights_only=True``.

Nothing else is ever unpickled: ``torch.load(..., weights_only=True)`` runs
PyTorch's restricted unpickler, which refuses any pickle that names a function
or class outside tensors and plain containers (the way a malicious file runs
code). A file that is too large, names other tensors than the module's, or has
other shapes is one sentence, and the module is left as it was. The file's
sha256 goes into the run record.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from pathlib import Path

import torch
from torch import nn

from geoviz.errors import ConfigError

__all__ = ["PAGE_MAX_BYTES", "file_sha256", "read_state", "check_state", "load_weights"]

# the most a page accepts in an upload (Streamlit keeps the upload in memory);
# the CLI and the Python API take any size unless asked
PAGE_MAX_BYTES = 200 * 2**20

# wrappers a training script commonly saves around its state_dict
_WRAPPERS = ("state_dict", "model_state_dict", "model")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def _unwrap(state, name: str) -> dict[str, torch.Tensor]:
    if isinstance(state, dict):
        for key in _WRAPPERS:
            if key in state and isinstance(state[key], dict) and all(isinstance(k, str) for k in state[key]):
                inner = state[key]
                if inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                    state = inner
                    break
    if not isinstance(state, dict) or not state:
        raise ConfigError(f"{name} holds no state_dict (a dict of tensors by name); got {type(state).__name__}.")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ConfigError(f"{name} holds other things than tensors by name (e.g. {bad[0]!r}); save model.state_dict() alone.")
    keys = list(state)
    if all(k.startswith("module.") for k in keys):  # saved from DataParallel / DDP
        state = {k[len("module."):]: v for k, v in state.items()}
    elif all(k.startswith(("param.", "buffer.")) for k in keys):  # geoviz's own network cache
        state = {k.split(".", 1)[1]: v for k, v in state.items()}
    return state


def read_state(path: str | os.PathLike, max_bytes: int | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file or a PyTorch state_dict file, on the CPU.

    Raises:
        ConfigError: no such file, too large, a pickle that needs code execution,
            or neither format.
    """
    path = Path(path).expanduser()
    name = path.name
    if not path.is_file():
        raise ConfigError(f"No weights file at {path}.")
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise ConfigError(f"{name} is {size / 2**20:.0f} MB; the most accepted here is {max_bytes / 2**20:.0f} MB.")
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch.save's zip, or a bare pickle
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            culprit = re.search(r"GLOBAL ([\w.]+)", str(err))
            what = f" (it names {culprit.group(1)})" if culprit else ""
            raise ConfigError(
                f"{name} is a pickle that needs code to run to load{what}; geoviz reads only safetensors or a "
                "plain state_dict saved with torch.save(model.state_dict(), ...), and loaded nothing."
            ) from None
        except Exception as err:
            raise ConfigError(f"{name} could not be read as a PyTorch state_dict ({type(err).__name__}).") from None
        return _unwrap(state, name)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return _unwrap(load_file(str(path)), name)
    except SafetensorError:
        raise ConfigError(
            f"{name} is neither a safetensors file nor a PyTorch state_dict (torch.save(model.state_dict(), ...))."
        ) from None


def _names(keys, limit: int = 3) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_state(model: nn.Module, state: dict[str, torch.Tensor], name: str = "the weights") -> dict[str, torch.Tensor]:
    """``state`` checked against ``model``: every parameter present with its shape.

    Buffers that the file lacks (BatchNorm statistics, e.g. in a file of parameters
    only) keep the module's own values; geoviz recomputes BatchNorm statistics at
    evaluated points anyway.

    Returns:
        The full state to load (the file's tensors, plus the module's missing buffers).

    Raises:
        ConfigError: a parameter missing, a name the module does not have, or a shape that differs.
    """
    own = model.state_dict()
    parameters = {n for n, _ in model.named_parameters()}
    missing = parameters - set(state)
    unexpected = set(state) - set(own)
    if missing:
        raise ConfigError(f"{name} lacks {len(missing)} of the model's parameters ({_names(missing)}); is it for another architecture?")
    if unexpected:
        raise ConfigError(f"{name} holds tensors the model does not have ({_names(unexpected)}); is it for another architecture?")
    wrong = [f"{k} {tuple(v.shape)} where the model has {tuple(own[k].shape)}" for k, v in state.items() if v.shape != own[k].shape]
    if wrong:
        raise ConfigError(f"{name} has other shapes than the model: {wrong[0]}" + (f" (and {len(wrong) - 1} more)." if len(wrong) > 1 else "."))
    floats = [k for k, v in state.items() if own[k].is_floating_point() and not v.is_floating_point()]
    if floats:
        raise ConfigError(f"{name} holds integer tensors where the model has floating-point ones ({_names(floats)}).")
    return {**own, **state}


def load_weights(model: nn.Module, path: str | os.PathLike, max_bytes: int | None = None) -> str:
    """Load a weights file into ``model`` (in place) after checking it; returns the file's sha256.

    Args:
        model: the architecture the weights are for.
        path: a ``.safetensors`` file or a ``torch.save(model.state_dict())`` file
            (read with ``weights_only=True``; no other pickle is ever loaded).
        max_bytes: refuse larger files (the pages pass :data:`PAGE_MAX_BYTES`).

    Raises:
        ConfigError: one sentence; the module is then unchanged.
    """
    state = check_state(model, read_state(path, max_bytes), Path(path).name)
    sha = file_sha256(path)
    with torch.no_grad():
        model.load_state_dict(state)
    return sha

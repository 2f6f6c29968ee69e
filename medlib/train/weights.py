"""Model weights as plain arrays: what crosses between a federated site and the centre, and what
is stored. Never a pickle: in a message they are numpy arrays (the engine's own serialization),
on disk safetensors with string metadata (the provenance).

    arrays = to_arrays(model)
    save("model.safetensors", arrays, {"recipe": recipe.digest})
    arrays, metadata = load("model.safetensors")
    load_into(model, arrays)
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from ..errors import MedlibError


class WeightsError(MedlibError, ValueError):
    """Weights that do not fit the model they are meant for, or are not plain arrays."""


def to_arrays(model) -> dict[str, np.ndarray]:
    """The model's state as numpy arrays, by parameter name."""
    return {name: value.detach().cpu().numpy().copy() for name, value in model.state_dict().items()}


def checked(arrays: object, like: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``arrays`` if it is a mapping of exactly ``like``'s names to numeric arrays of the same shapes.

    Raises:
        WeightsError: anything else (bytes, objects, a missing or extra name, another shape).
    """
    if not isinstance(arrays, dict):
        raise WeightsError(f"weights must be a mapping of names to arrays, not {type(arrays).__name__}")
    if set(arrays) != set(like):
        extra, missing = sorted(set(arrays) - set(like))[:3], sorted(set(like) - set(arrays))[:3]
        raise WeightsError(f"weights do not fit the recipe's model (unexpected: {extra}, missing: {missing})")
    for name, value in arrays.items():
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiu" or value.shape != like[name].shape:
            raise WeightsError(f"weights[{name!r}] must be a numeric array of shape {like[name].shape}")
    return arrays


def load_into(model, arrays: dict[str, np.ndarray]) -> None:
    """Set the ``torch.nn.Module``'s state from ``arrays`` (checked against it first)."""
    import torch

    state = model.state_dict()
    checked(arrays, {k: v.cpu().numpy() for k, v in state.items()})
    model.load_state_dict({k: torch.from_numpy(np.asarray(arrays[k])).to(state[k].dtype) for k in state})


def floating(arrays: dict[str, np.ndarray]) -> list[str]:
    """The names averaged across sites: floating-point weights and buffers (counters such as
    batch norm's ``num_batches_tracked`` keep the global value)."""
    return sorted(k for k, v in arrays.items() if v.dtype.kind == "f")


def flat(arrays: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    return np.concatenate([arrays[k].astype(np.float64).ravel() for k in names]) if names else np.zeros(0)


def unflat(vector: np.ndarray, like: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    out, start = dict(like), 0
    for k in names:
        n = like[k].size
        out[k] = vector[start:start + n].reshape(like[k].shape).astype(like[k].dtype)
        start += n
    return out


def save(path: str | os.PathLike[str], arrays: dict[str, np.ndarray], metadata: dict[str, object]) -> Path:
    """Write ``arrays`` as safetensors, atomically; ``metadata`` values that are not strings are
    stored as JSON."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in metadata.items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The arrays and metadata of a safetensors file.

    Raises:
        WeightsError: the file is not safetensors.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path} is not a safetensors weights file: {e}") from None

"""Devices and slice-wise batched inference with a bounded memory footprint.

Only `batch` slices are on the device at a time; results go straight back to a CPU float32 array.
On CUDA out-of-memory the batch is halved and retried, and below one slice the run moves to the
CPU; each change is reported through the progress callback, never as a raw traceback.
"""

from __future__ import annotations

from typing import Callable, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError
from .progress import CancelToken, PhaseTimer, ProgressCallback, ProgressEvent


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("Device 'cuda' was requested but no CUDA GPU is available to torch "
                         f"(torch {torch.__version__}). Choose device 'cpu' or 'auto'.")
    return torch.device(name)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"cuda ({props.name}, {props.total_memory / 2**30:.1f} GiB)"
    return f"cpu ({torch.get_num_threads()} threads)"


def _forward_padded(model: torch.nn.Module, x: torch.Tensor, min_size: int) -> torch.Tensor:
    """Reflect-pad images smaller than the network's minimum size, then crop back."""
    h, w = x.shape[-2:]
    pad_h, pad_w = max(0, min_size - h), max(0, min_size - w)
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    return model(x)[..., :h, :w]


def apply_slicewise(model: torch.nn.Module, slices: np.ndarray, batch: int, *, phase: str = "infer",
                    to_input: Callable[[np.ndarray], np.ndarray] = lambda a: a,
                    from_output: Callable[[np.ndarray], np.ndarray] = lambda a: a,
                    autocast: bool = False, progress: Optional[ProgressCallback] = None,
                    cancel: Optional[CancelToken] = None) -> np.ndarray:
    """Run a 2D network over (z, y, x) slices; returns float32 (z, out_channels, y, x) squeezed to
    (z, y, x) for single-channel outputs."""
    device = next(model.parameters()).device
    min_size = getattr(model, "min_size", 1)
    outputs: List[np.ndarray] = []
    timer = PhaseTimer(phase, len(slices), progress, cancel)
    start = 0
    while start < len(slices):
        chunk = np.ascontiguousarray(to_input(slices[start:start + batch]), dtype=np.float32)
        try:
            with torch.no_grad(), torch.autocast(device.type, enabled=autocast and device.type == "cuda"):
                x = torch.from_numpy(chunk[:, None]).to(device)
                y = _forward_padded(model, x, min_size).float().cpu().numpy()
        except torch.OutOfMemoryError:
            del chunk
            torch.cuda.empty_cache()
            if batch > 1:
                batch = max(1, batch // 2)
                message = f"GPU out of memory: retrying with {batch} slice(s) per batch"
            else:
                model.to("cpu")
                device = torch.device("cpu")
                message = "GPU out of memory even for one slice: continuing on the CPU (slower)"
            if progress is not None:
                progress(ProgressEvent(phase, start, len(slices), message=message))
            continue
        outputs.append(from_output(y[:, 0] if y.shape[1] == 1 else y).astype(np.float32, copy=False))
        start += len(chunk)
        timer.emit(start)
    return np.concatenate(outputs, axis=0)

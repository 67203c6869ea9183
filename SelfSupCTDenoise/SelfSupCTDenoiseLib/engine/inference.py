"""Devices, threads, mixed precision and slice-wise batched inference with a bounded memory footprint.

Only `batch` slices are on the device at a time; results go straight into one CPU float32 array.
On CUDA out-of-memory the batch is halved and retried, and below one slice the run moves to the
CPU; each change is reported through the progress callback, never as a raw traceback.
On the CPU the networks run in channels_last, one slice per batch (`cpu_layout`, `inference_batch`).
"""

from __future__ import annotations

import copy
import os
from contextlib import contextmanager
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from .heap import give_back_free_memory
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


def mixed_precision_dtype(device: torch.device, requested: bool = True,
                          bf16_supported: Optional[bool] = None) -> Optional[torch.dtype]:
    """The autocast dtype of a run, or None for float32 (the CPU, or mixed precision turned off).

    bfloat16 keeps float32's exponent range, so small gradients do not underflow; GPUs without it
    get float16, which needs a GradScaler in training (adapt.py makes one for float16 only).
    `bf16_supported` defaults to asking the GPU.
    """
    if not requested or device.type != "cuda":
        return None
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_bf16_supported()
    return torch.bfloat16 if bf16_supported else torch.float16


def resolve_threads(requested: int = 0) -> int:
    """CPU threads for a run: `requested`; with 0, OMP_NUM_THREADS where the environment sets it (a
    cluster's or a benchmark's own limit), else every core this process may run on."""
    if requested > 0:
        return requested
    try:
        limit = int(os.environ.get("OMP_NUM_THREADS", ""))
        if limit > 0:
            return limit
    except ValueError:
        pass
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextmanager
def torch_threads(requested: int = 0) -> Iterator[int]:
    """Run a block with `resolve_threads(requested)` torch threads (yielded), then restore the count:
    float sums are split per thread, so the thread count is part of what makes a result reproducible."""
    previous = torch.get_num_threads()
    threads = resolve_threads(requested)
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(previous)


#: Slices per inference batch when `infer_batch` is 0 (the default). On the CPU one: a 512x512
#: slice's activations (32 MB per layer of the lite network) already overflow the caches, and a batch
#: of 4 took 1.4x as long per slice (2 cores); on CUDA 4.
AUTO_BATCH = {"cpu": 1, "cuda": 4}


def inference_batch(requested: int, device: torch.device) -> int:
    """Slices per inference batch: `requested`, or with 0 the device's `AUTO_BATCH`."""
    return requested if requested > 0 else AUTO_BATCH.get(device.type, 1)


def cpu_layout(model: torch.nn.Module) -> torch.nn.Module:
    """For inference on the CPU: a copy of the network with its weights in channels_last (the model
    itself elsewhere, or when it is in that layout already, or has no 2D convolution weights).

    oneDNN then runs the transposed convolutions natively, where the default layout takes a slow
    path: measured on 2 cores, a 512x512 lite slice took 2.2x as long. The outputs of both layouts
    differ by float rounding only (< 1e-3 HU). A copy, so that a model being adapted keeps its layout:
    training in channels_last is 1.2x faster per step but its rounding, carried through 200 steps,
    moved outputs by up to 1.1 HU from the default layout's.
    """
    weights = [p for p in model.parameters() if p.dim() == 4]
    if (not weights or weights[0].device.type != "cpu"
            or all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)):
        return model
    return copy.deepcopy(model).to(memory_format=torch.channels_last)


def _forward_padded(model: torch.nn.Module, x: torch.Tensor, min_size: int) -> torch.Tensor:
    """Reflect-pad images smaller than the network's minimum size, then crop back."""
    h, w = x.shape[-2:]
    pad_h, pad_w = max(0, min_size - h), max(0, min_size - w)
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    return model(x)[..., :h, :w]


#: The views of a slice that inference can average (config `views`: the first 1, 2, 4 or 8), as
#: (quarter turns, mirrored): the slice as it is, turned by 90, 180 and 270 degrees, then the same four
#: mirrored left-right. The adapted network saw patches in all eight (augment "rot90flip"), but its
#: errors differ between them, so their mean is a cheap ensemble (docs/LEVERS.md section 12; a quarter
#: turn second: it gained more than a half turn there).
VIEWS = ((0, False), (1, False), (2, False), (3, False), (0, True), (1, True), (2, True), (3, True))


def to_view(x: torch.Tensor, view) -> torch.Tensor:
    """(..., y, x) slices as `view` (an entry of VIEWS) shows them."""
    turns, mirrored = view
    x = torch.rot90(x, turns, dims=(-2, -1)) if turns else x
    return torch.flip(x, dims=(-1,)) if mirrored else x


def from_view(y: torch.Tensor, view) -> torch.Tensor:
    """`to_view` undone."""
    turns, mirrored = view
    y = torch.flip(y, dims=(-1,)) if mirrored else y
    return torch.rot90(y, -turns, dims=(-2, -1)) if turns else y


def _forward_views(model: torch.nn.Module, x: torch.Tensor, min_size: int, views: int) -> torch.Tensor:
    """The mean over the first `views` of VIEWS of the network's output, each turned back."""
    total = None
    for view in VIEWS[:views]:
        seen = to_view(x, view)
        if seen.device.type == "cpu":
            seen = seen.contiguous(memory_format=torch.channels_last)
        y = from_view(_forward_padded(model, seen, min_size).float(), view)
        total = y if total is None else total + y
    return total if views == 1 else total / views


def apply_slicewise(model: torch.nn.Module, slices: np.ndarray, batch: int = 0, *, phase: str = "infer",
                    to_input: Callable[[np.ndarray], np.ndarray] = lambda a: a,
                    from_output: Callable[[np.ndarray], np.ndarray] = lambda a: a,
                    amp_dtype: Optional[torch.dtype] = None, progress: Optional[ProgressCallback] = None,
                    cancel: Optional[CancelToken] = None, out: Optional[np.ndarray] = None,
                    done: Sequence[int] = (), boxes: Optional[np.ndarray] = None, views: int = 1) -> np.ndarray:
    """Run a 2D network over (z, y, x) slices; returns float32 (z, out_channels, y, x) squeezed to
    (z, y, x) for single-channel outputs. `batch`: slices per batch, 0 = per device (`inference_batch`).
    `amp_dtype`: CUDA autocast dtype (`mixed_precision_dtype`). `out`: the array to fill (else a new
    one); `done`: indices of slices whose output `out` already holds (not run again, counted as done
    in the progress). `to_input` sees one batch of slices at a time (no whole-volume copy).
    `boxes` (single-channel networks): (z, 4) rows of (y0, y1, x0, x1) per slice (`body.body_boxes`);
    the network then sees a batch's box only (the union of its slices' boxes), and outside it a
    slice's output is the slice itself. `views`: the output is the mean over the first `views` of VIEWS
    (that many forwards per slice)."""
    model = cpu_layout(model)
    device = next(model.parameters()).device
    batch = inference_batch(batch, device)
    min_size = getattr(model, "min_size", 1)
    todo = np.setdiff1d(np.arange(len(slices)), np.asarray(done, dtype=int))
    timer = PhaseTimer(phase, len(slices), progress, cancel)
    position, last_shape = 0, None
    while position < len(todo):
        index = todo[position:position + batch]
        if index[-1] - index[0] == len(index) - 1:  # consecutive slices: a view, not a copy
            index = slice(int(index[0]), int(index[-1]) + 1)
        y0, y1, x0, x1 = (0, slices.shape[-2], 0, slices.shape[-1]) if boxes is None else (
            boxes[index, 0].min(), boxes[index, 1].max(), boxes[index, 2].min(), boxes[index, 3].max())
        chunk = np.ascontiguousarray(to_input(slices[index, y0:y1, x0:x1]), dtype=np.float32)
        try:
            with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype,
                                                 enabled=amp_dtype is not None and device.type == "cuda"):
                x = torch.from_numpy(chunk[:, None]).to(device)
                if device.type == "cpu":
                    x = x.contiguous(memory_format=torch.channels_last)
                y = _forward_views(model, x, min_size, views).cpu().numpy()
        except torch.OutOfMemoryError:
            del chunk
            torch.cuda.empty_cache()
            if batch > 1:
                batch = max(1, batch // 2)
                message = f"GPU out of memory: retrying with {batch} slice(s) per batch"
            else:
                model = cpu_layout(model.to("cpu"))
                device = torch.device("cpu")
                message = "GPU out of memory even for one slice: continuing on the CPU (slower)"
            if progress is not None:
                progress(ProgressEvent(phase, position + len(slices) - len(todo), len(slices), message=message))
            continue
        y = y[:, 0] if y.shape[1] == 1 else y
        if out is None:
            out = np.empty((len(slices),) + y.shape[1:-2] + slices.shape[-2:], dtype=np.float32)
        if boxes is not None:
            out[index] = slices[index]
        out[index, ..., y0:y1, x0:x1] = from_output(y)
        if boxes is not None and device.type == "cpu" and chunk.shape != last_shape:
            give_back_free_memory()  # the buffers of this box's size (engine/heap.py)
        last_shape = chunk.shape
        position += len(chunk)
        timer.emit(position + len(slices) - len(todo))
    if not len(todo):
        if out is None:
            raise ValueError("apply_slicewise: no slices to run and no `out` array to return")
        timer.emit(len(slices))
    return out

"""Reading, validating and writing CT volumes through SimpleITK (NRRD, NIfTI, MHA, DICOM series).

Arrays are (z, y, x) in HU; SimpleITK applies the DICOM rescale slope/intercept on reading. Every
check raises `InputError` with what is wrong and what to do, before anything is written. Writing
(`OutputSet`) goes to temporary files next to the targets, is read back and compared, and is renamed
into place as the last step, so a failed, interrupted or short (full disk) write leaves the previous
files as they were, and the input is never the output.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import tempfile
import threading
import uuid
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from ..engine.arrays import slabs
from ..engine.ct_array import check_ct_array
from ..errors import InputError
from .dicom_study import compressed_syntax, select_series
from .provenance_io import FIELD_PREFIX

PathLike = Union[str, os.PathLike]
VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")


def volume_suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def is_dicom_folder(path: PathLike) -> bool:
    """Whether `path` is a folder holding a DICOM series."""
    path = Path(path)
    return path.is_dir() and bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))


def stem(path: Path) -> str:
    """The file name without its volume suffix (`VOLUME_SUFFIXES`; e.g. both parts of .nii.gz)."""
    suffix = volume_suffix(path)
    return path.name[: -len(suffix)] if suffix and path.name.lower().endswith(suffix) else path.name


def refuse_special_file(path: Path) -> None:
    """A FIFO, socket or device is not a CT volume, and reading one may wait for ever (a FIFO with
    no writer): refused at once."""
    if path.exists() and not (path.is_file() or path.is_dir()):
        raise InputError(f"Cannot read {path}: it is not a regular file (a FIFO, socket or device); a CT volume "
                         "is a file or a DICOM folder.")


def read_volume(path: PathLike, ct_check: bool = True, series: Optional[str] = None) -> sitk.Image:
    """Read a 3D CT volume from a file or a DICOM folder (its only CT image series, or `series`: a
    SeriesNumber or SeriesInstanceUID, see dicom_study.select_series) and validate it (`ct_check`
    False: whether it is CT in HU is not judged, see `validate_image`)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"Input not found: {path}")
    refuse_special_file(path)
    if series is not None and not path.is_dir():
        raise InputError(f"--series picks a series of a DICOM folder; {path.name} is a file.")
    try:
        if path.is_dir():
            image = _read_dicom_series(path, series)
        else:
            image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reason"
        syntax = compressed_syntax(select_series(path, series).series.files[0]) if path.is_dir() else None
        if syntax is not None:
            raise InputError(f"Cannot decode {path}: its pixel data are compressed as {syntax}, which "
                             "SimpleITK's GDCM does not read. Decompress the series first (e.g. gdcmconv --raw, "
                             "dcmdjpeg, or pydicom's Dataset.decompress()).") from None
        raise InputError(f"Cannot read {path}: {first}. Supported: NRRD, NIfTI, MHA/MHD files or a "
                         "DICOM series or study folder.") from None
    validate_image(image, str(path), ct_check)
    return image


#: A slice may lie at most this fraction of the slice spacing from where the volume's regular grid puts
#: it (sub-voxel: rounded positions pass; a missing, doubled or shifted slice does not).
SLICE_POSITION_TOLERANCE = 0.1


def _numbers(text: str) -> np.ndarray:
    return np.array([float(v) for v in text.split("\\")], dtype=float)


def _read_dicom_series(folder: Path, series: Optional[str] = None) -> sitk.Image:
    chosen = select_series(folder, series).series
    files = chosen.files
    if chosen.frames > 1:  # GDCM stacks the frames without their per-frame positions: wrong geometry
        raise InputError(f"{files[0]} is a multi-frame (Enhanced CT) object of {chosen.frames} frames, which "
                         "SelfSupCTDenoise does not read: convert it to single-frame slices (dcm4che's emf2sf) "
                         "or to NIfTI (dcm2niix) first.")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    reader.MetaDataDictionaryArrayUpdateOn()  # per-slice headers, to check where each slice lies
    image = reader.Execute()
    positions = []
    for k, path in enumerate(files):
        if not reader.HasMetaDataKey(k, "0020|0032") or not reader.GetMetaData(k, "0020|0032").strip():
            raise InputError(f"{path} has no ImagePositionPatient: the slice cannot be placed in the volume. "
                             "Remove it or copy the series again.")
        positions.append(_numbers(reader.GetMetaData(k, "0020|0032")))
        if reader.HasMetaDataKey(k, "0020|0037") and reader.HasMetaDataKey(0, "0020|0037"):
            orientation = _numbers(reader.GetMetaData(k, "0020|0037"))
            if np.max(np.abs(orientation - _numbers(reader.GetMetaData(0, "0020|0037")))) > 1e-4:
                raise InputError(f"{path} is oriented differently from {files[0].name} "
                                 f"(ImageOrientationPatient): the slices of {folder} do not form one volume.")
    _check_slice_positions(image, files, positions)
    return image


def _check_slice_positions(image: sitk.Image, files: Sequence[Path], positions: Sequence[np.ndarray]) -> None:
    """Refuse a series whose slices (ImagePositionPatient) do not lie where the volume read from it
    puts them: SimpleITK assumes a regular grid, so a missing, doubled or shifted slice would
    silently change the geometry (spacing, positions) of everything derived from it."""
    if len(positions) < 3:
        return
    positions = np.asarray(positions, dtype=float)
    grid = np.array([image.TransformIndexToPhysicalPoint((0, 0, k)) for k in range(len(positions))])
    error = np.linalg.norm(positions - grid, axis=1)
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    normal = np.cross(direction[:, 0], direction[:, 1])
    gaps = np.abs(np.diff(positions @ normal))
    typical = float(np.median(gaps))
    if error.max() <= max(0.01, SLICE_POSITION_TOLERANCE * typical):
        return
    k = int(np.argmax(np.abs(gaps - typical)))
    if abs(gaps[k] - typical) > max(0.01, SLICE_POSITION_TOLERANCE * typical):
        raise InputError(f"The slices of {files[0].parent} are not evenly spaced: {files[k].name} and "
                         f"{files[k + 1].name} are {gaps[k]:.4g} mm apart where the others are {typical:.4g} mm "
                         "(a missing or extra slice?). Read as one volume its geometry would be wrong: copy the "
                         "series again.")
    worst = int(np.argmax(error))
    raise InputError(f"The slices of {files[0].parent} are shifted sideways from one to the next "
                     f"({files[worst].name} lies {error[worst]:.3g} mm off a straight stack; gantry tilt?): "
                     "they do not form a regular volume. Resample the series to a regular grid first.")


def validate_image(image: sitk.Image, name: str = "the input", ct_check: bool = True) -> None:
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{name} has {image.GetNumberOfComponentsPerPixel()} values per voxel (a vector, "
                         "colour or multi-echo image). SelfSupCTDenoise needs a single-channel CT volume in HU.")
    if image.GetDimension() != 3:
        kind = "2D image" if image.GetDimension() == 2 else f"{image.GetDimension()}D image"
        raise InputError(f"{name} is a {kind}. SelfSupCTDenoise needs a 3D CT volume (for a time "
                         "series, extract one 3D frame first).")
    check_ct_array(sitk.GetArrayViewFromImage(image), name, ct_check)


def image_like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """A SimpleITK image of `array` with the reference's exact origin, spacing and direction."""
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def same_file(a: PathLike, b: PathLike) -> bool:
    a, b = Path(a), Path(b)
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def check_output_path(output: PathLike, *inputs: PathLike) -> Path:
    output = Path(output)
    for source in inputs:
        if source is not None and same_file(output, source):
            raise InputError(f"The output {output} is the input: choose another output path (the input "
                             "is never overwritten).")
    if output.exists() and output.is_dir():
        raise InputError(f"The output {output} is a folder; give a file name ending in one of "
                         f"{', '.join(VOLUME_SUFFIXES)}.")
    if volume_suffix(output) not in VOLUME_SUFFIXES:
        raise InputError(f"Unsupported output type {output.name!r}: use one of {', '.join(VOLUME_SUFFIXES)}.")
    if not output.parent.exists():
        raise InputError(f"The output folder {output.parent} does not exist.")
    check_folder_writable(output.parent)
    return output


#: Start of the names of temporary files and folders next to the outputs (then the process id).
TEMP_PREFIX = ".selfsupctdenoise-"


def _temp_prefix() -> str:
    return f"{TEMP_PREFIX}{os.getpid()}-"


def check_folder_writable(folder: PathLike) -> None:
    """Create and delete a probe file, so that an unwritable folder is found before any work.
    (Permission bits alone do not tell: root ignores them, a read-only mount does not show in them.)"""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"The output folder {folder} "
                         + ("is not a folder." if folder.exists() else "does not exist."))
    try:
        handle, probe = tempfile.mkstemp(prefix=_temp_prefix(), suffix=".probe", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"The output folder {folder} cannot be written ({exc.strerror}): choose "
                         "another folder.") from None


def remove_stale_temps(folder: PathLike, started: float) -> None:
    """Remove what killed runs left in `folder`: temporary entries of ours older than `started`
    (a time.time()), i.e. made before the current run began."""
    for entry in Path(folder).glob(f"{TEMP_PREFIX}*"):
        try:
            if entry.lstat().st_mtime >= started:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError:
            pass  # another process removed it, or it is not ours to remove: leave it


def _disk_full_or(target: Path, reason: str, needed: int = 0, error: Optional[int] = None) -> InputError:
    """The one-line message for a failed write: a full disk says so (SimpleITK does not always
    report ENOSPC as such: "fwrite wrote only ...", or a short file and no error at all)."""
    try:
        free: Optional[int] = shutil.disk_usage(target.parent).free
    except OSError:
        free = None
    full = error in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)) or "no space left" in reason.lower()
    if full or (free is not None and free < needed):
        room = (f" ({free / 2**20:.1f} MiB free, up to {needed / 2**20:.1f} MiB needed)"
                if free is not None and needed else "")
        return InputError(f"No space left on the disk of {target.parent}{room}: free some space or choose another "
                          f"output folder. {target.name} was not written; previous files are unchanged.")
    return InputError(f"Cannot write {target}: {reason}. It was not written; previous files are unchanged.")


def write_error(target: Path, exc: OSError) -> InputError:
    """One line for an OSError met while writing `target` (full disk, read-only, ...)."""
    return _disk_full_or(target, exc.strerror or str(exc), error=exc.errno)


@contextlib.contextmanager
def _signals_held():
    """Hold SIGINT/SIGTERM (main thread): a signal received in the block is acted on when it ends,
    so the renames in it are never cut in half. (Blocking with pthread_sigmask is not enough: the
    kernel hands a process-directed signal to another thread, e.g. one of torch's.)"""
    if threading.current_thread() is not threading.main_thread():
        yield  # Python runs signal handlers in the main thread only
        return
    received: List[int] = []
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[signum] = signal.signal(signum, lambda number, frame: received.append(number))
        except (ValueError, OSError):
            pass
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        for signum in received:
            handler = previous.get(signum)
            if callable(handler):
                handler(signum, None)  # e.g. raises KeyboardInterrupt
            elif handler in (signal.SIG_DFL, None):
                os.kill(os.getpid(), signum)


def _last_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[-1].strip() if lines else type(exc).__name__


def _image_bytes(image: sitk.Image) -> int:
    return image.GetNumberOfPixels() * image.GetNumberOfComponentsPerPixel() * image.GetSizeOfPixelComponent()


def _same_image(written: sitk.Image, read: sitk.Image) -> Optional[str]:
    """What differs between an image and its read-back copy (None if nothing): pixel type, grid,
    geometry (NIfTI stores it in float32), voxels, and our provenance header fields."""
    if (read.GetPixelID(), read.GetSize()) != (written.GetPixelID(), written.GetSize()):
        return "another pixel type or size"
    for name in ("GetOrigin", "GetSpacing", "GetDirection"):
        if not np.allclose(getattr(read, name)(), getattr(written, name)(), rtol=1e-5, atol=1e-4):
            return "another geometry"
    read_voxels, written_voxels = sitk.GetArrayViewFromImage(read), sitk.GetArrayViewFromImage(written)
    # slab by slab: no volume-sized temporaries on top of the read-back copy
    if not all(np.array_equal(read_voxels[part], written_voxels[part], equal_nan=True) for part in slabs(read_voxels)):
        return "other voxel values"
    for key in written.GetMetaDataKeys():
        kept = key.startswith(FIELD_PREFIX) and read.HasMetaDataKey(key)  # NIfTI keeps no custom fields
        if kept and read.GetMetaData(key) != written.GetMetaData(key):
            return f"another {key} header field"
    return None


class OutputSet:
    """Files that appear all together or not at all, each replacing a previous one or not.

    Each file is first written under its final name inside a temporary folder next to its target
    (a .mhd/.nhdr header keeps pointing at its data file); volumes are read back and compared
    with what was meant to be written (SimpleITK may write a short file without an error on a full
    disk). `commit()` then renames everything into place in the order added (add the file that
    marks the set complete last), with SIGINT/SIGTERM held and the previous files kept until all
    renames succeeded. Leaving the `with` block without a commit (error, Ctrl+C, SIGTERM) removes
    the temporaries and changes nothing."""

    def __init__(self) -> None:
        self._staged: List[Tuple[Path, Path]] = []  # (temporary folder, target)

    def __enter__(self) -> "OutputSet":
        return self

    def __exit__(self, *exc_info) -> None:
        self.discard()

    def stage(self, target: PathLike) -> Path:
        """The path to write `target` to before the commit (same name, in a temporary folder)."""
        target = Path(target)
        try:
            folder = Path(tempfile.mkdtemp(prefix=_temp_prefix(), dir=target.parent))
        except OSError as exc:
            raise write_error(target, exc) from None
        self._staged.append((folder, target))
        return folder / target.name

    def add_volume(self, image: sitk.Image, target: PathLike, compress: bool = True) -> None:
        target = Path(target)
        temp = self.stage(target)
        try:
            sitk.WriteImage(image, str(temp), compress)
        except RuntimeError as exc:
            raise _disk_full_or(target, _last_line(exc), _image_bytes(image)) from None
        try:
            problem = _same_image(image, sitk.ReadImage(str(temp)))
        except RuntimeError as exc:
            problem = f"an unreadable file ({_last_line(exc)})"
        if problem is not None:
            raise _disk_full_or(target, f"reading it back gave {problem}", _image_bytes(image))

    def add_text(self, target: PathLike, text: str) -> None:
        target = Path(target)
        try:
            self.stage(target).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise write_error(target, exc) from None

    def commit(self) -> None:
        done: List[Tuple[Path, bool, Optional[Path]]] = []  # (target, existed, previous file kept aside)
        with _signals_held():
            try:
                for folder, target in self._staged:
                    # a separate data file (.raw/.zraw/.raw.gz) before its header
                    for temp in sorted(folder.iterdir(), key=lambda p: p.name == target.name):
                        final = target.parent / temp.name
                        existed, previous = final.exists(), _keep_aside(final, folder)
                        os.replace(temp, final)
                        done.append((final, existed, previous))
            except BaseException as exc:
                for final, existed, previous in reversed(done):
                    try:
                        if previous is not None:
                            os.replace(previous, final)
                        elif existed:
                            pass  # not restorable (no hard links here): keep the new file
                        elif final.is_dir():
                            shutil.rmtree(final)
                        else:
                            final.unlink()
                    except OSError:
                        pass  # undo what can be undone
                if isinstance(exc, OSError):
                    raise write_error(target, exc) from None
                raise
            self.discard()  # the temporary folders now hold only the previous files

    def discard(self) -> None:
        for folder, _ in self._staged:
            shutil.rmtree(folder, ignore_errors=True)
        self._staged = []


def _keep_aside(final: Path, folder: Path) -> Optional[Path]:
    """Keep the file about to be replaced (a hard link: `final` never goes missing), or the folder
    (a DICOM series: moved aside), in `folder` until the commit is over."""
    if not final.exists():
        return None
    # a short name (not the file's, which may be as long as the file system allows), unique in `folder`
    aside = folder / f"{TEMP_PREFIX}previous-{uuid.uuid4().hex[:12]}"
    if final.is_dir():
        os.rename(final, aside)
        return aside
    try:
        os.link(final, aside)
    except OSError:  # no hard links here: the previous file cannot be restored
        return None
    return aside


def write_volume(image: sitk.Image, path: PathLike, compress: bool = True) -> None:
    """Write one volume atomically and verified (see `OutputSet`)."""
    with OutputSet() as outputs:
        outputs.add_volume(image, path, compress)
        outputs.commit()

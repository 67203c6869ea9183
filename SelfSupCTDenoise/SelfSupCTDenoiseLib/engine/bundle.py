"""Model bundle: one directory holding f_theta, the m noise models and everything needed to use them.

Layout::

    <bundle>/manifest.json      format, profile, normalisation, calibration, noise histogram,
                                training provenance, and a SHA-256 per weight file
    <bundle>/denoiser.pt        RedCNN state dict
    <bundle>/noise_model_<i>.pt UNet state dicts, one per training subject
    <bundle>/loss_curves.json   (optional) pre-training loss curves

Loading verifies every checksum before any weight is read and refuses a corrupt, incomplete or
inconsistent bundle with a message that says what to do. Saving writes into a temporary sibling
directory and renames it into place, so a failed save never leaves a half-written bundle.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..errors import BundleError
from .config import NetworkProfile
from .normalization import Normalization

FORMAT = "selfsupctdenoise-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def models_dir() -> Path:
    """Where the module ships its bundles (`SelfSupCTDenoise/Resources/Models`)."""
    return Path(__file__).resolve().parents[2] / "Resources" / "Models"


def default_bundle_dir(profile: str = "lite") -> Path:
    return models_dir() / profile


@dataclass
class Bundle:
    path: Path
    manifest: Dict[str, Any]
    profile: NetworkProfile
    normalization: Normalization
    sha256: str  # of manifest.json, which pins every weight file: identifies the bundle

    @property
    def name(self) -> str:
        return self.manifest.get("name", self.path.name)

    @property
    def calibration(self) -> Dict[str, Any]:
        return self.manifest.get("calibration") or {}

    @property
    def noise_histogram(self) -> Optional[Dict[str, List[float]]]:
        return self.manifest.get("noise_histogram")

    @property
    def num_noise_models(self) -> int:
        return len(self.manifest["files"]["noise_models"])

    def build_denoiser(self, device="cpu"):
        from .networks.redcnn import RedCNN

        model = RedCNN(**self.profile.denoiser_kwargs())
        self._load_into(model, self.manifest["files"]["denoiser"]["name"], device)
        return model

    def build_noise_models(self, device="cpu"):
        from .networks.unet import UNet

        models = []
        for entry in self.manifest["files"]["noise_models"]:
            model = UNet(**self.profile.noise_model_kwargs())
            self._load_into(model, entry["name"], device)
            models.append(model)
        return models

    def _load_into(self, model, file_name: str, device) -> None:
        import torch

        state = torch.load(self.path / file_name, map_location="cpu", weights_only=True)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise BundleError(
                f"Model bundle {self.path}: {file_name} does not match the '{self.profile.name}' profile "
                f"recorded in its manifest ({str(exc).splitlines()[0]}). Re-create the bundle with "
                "`selfsupctdenoise pretrain`.") from exc
        model.to(device).eval()


def load_bundle(path: Optional[os.PathLike] = None) -> Bundle:
    """Open and verify a bundle directory (default: the shipped `lite` bundle)."""
    path = Path(path) if path is not None else default_bundle_dir()
    if not path.is_dir():
        raise BundleError(f"Model bundle not found: {path}. Give an existing bundle directory "
                          "(for example the shipped SelfSupCTDenoise/Resources/Models/lite).")
    manifest_path = path / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{path} is not a model bundle: {MANIFEST} is missing.") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"Model bundle {path}: {MANIFEST} is corrupt ({exc}). Reinstall the "
                          "extension or re-create the bundle.") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"Model bundle {path}: unsupported format {manifest.get('format')!r} "
                          f"version {manifest.get('format_version')!r} (expected {FORMAT} {FORMAT_VERSION}).")
    try:
        profile = NetworkProfile(**manifest["profile"])
        normalization = Normalization(**manifest["normalization"])
        entries = [manifest["files"]["denoiser"], *manifest["files"]["noise_models"]]
    except (KeyError, TypeError) as exc:
        raise BundleError(f"Model bundle {path}: manifest is incomplete ({exc}).") from None
    for entry in entries:
        file_path = path / entry["name"]
        if not file_path.is_file():
            raise BundleError(f"Model bundle {path}: {entry['name']} is missing. Reinstall the "
                              "extension or re-create the bundle.")
        actual = sha256_file(file_path)
        if actual != entry["sha256"]:
            raise BundleError(
                f"Model bundle {path}: checksum mismatch for {entry['name']} (expected "
                f"{entry['sha256'][:12]}..., found {actual[:12]}...). The file is corrupt or was "
                "replaced; reinstall the extension or re-create the bundle.")
    return Bundle(path, manifest, profile, normalization, sha256_file(manifest_path))


def save_bundle(path: os.PathLike, *, profile: NetworkProfile, normalization: Normalization,
                denoiser_state: Dict[str, Any], noise_model_states: Sequence[Dict[str, Any]],
                calibration: Optional[Dict[str, Any]] = None,
                noise_histogram: Optional[Dict[str, List[float]]] = None,
                training: Optional[Dict[str, Any]] = None,
                loss_curves: Optional[Dict[str, Any]] = None, name: Optional[str] = None) -> Bundle:
    """Write a bundle atomically and return it, verified."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        def store(state, file_name):
            torch.save(state, staging / file_name)
            return {"name": file_name, "sha256": sha256_file(staging / file_name)}

        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": name or path.name,
            "profile": profile.__dict__,
            "normalization": normalization.to_dict(),
            "files": {
                "denoiser": store(denoiser_state, "denoiser.pt"),
                "noise_models": [store(s, f"noise_model_{i}.pt") for i, s in enumerate(noise_model_states)],
            },
            "calibration": calibration or {},
            "noise_histogram": noise_histogram,
            "training": training or {},
        }
        if loss_curves is not None:
            (staging / "loss_curves.json").write_text(json.dumps(loss_curves))
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
        # the bundle already there is set aside, not deleted, until the new one is in place
        aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.previous.", dir=path.parent)) if path.exists() else None
        if aside is not None:
            os.replace(path, aside / path.name)
        try:
            os.replace(staging, path)
        except BaseException:
            if aside is not None:
                os.replace(aside / path.name, path)
            raise
        finally:
            if aside is not None:
                shutil.rmtree(aside, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return load_bundle(path)


def default_bundle_for_device(device_type: str, folder: Optional[Path] = None) -> Path:
    """The bundle `auto` picks (in `folder`, default: the shipped models): one whose manifest lists
    this device under `auto_on`, else `lite`. The Slicer panel's 'auto' uses this too.

    A bigger network is not a better prior: the shipped `paper` bundle, trained on fewer protocols,
    scored below `lite` on unseen noise (docs/DATA.md). So `auto_on` is written into a manifest only
    for a bundle measured at least as good as `lite` on the benchmark's unseen protocols on that
    device; none ships with it today."""
    folder = Path(folder) if folder is not None else models_dir()
    for path in sorted(p for p in folder.iterdir() if (p / MANIFEST).is_file()) if folder.is_dir() else ():
        try:
            auto_on = json.loads((path / MANIFEST).read_text(encoding="utf-8")).get("auto_on", ())
        except (OSError, ValueError, AttributeError):
            continue
        if device_type in auto_on:
            return path
    return folder / "lite"

"""What the worker needs inside Slicer, checked from package metadata and installed on first use.

Only torch is normally missing: numpy, scipy and SimpleITK ship with Slicer (and SimpleITK must never
be pip-installed over Slicer's own). torch comes through the PyTorch extension's `PyTorchUtils`,
which picks the CUDA build matching the driver or the CPU build. torch is imported only by the
worker process, never by Slicer itself, so no restart is needed after installing it. Checks read
installed metadata only: nothing is imported, and nothing needs the network once installed.
"""

import importlib
import importlib.metadata
import re
from typing import List, Optional, Sequence

TORCH_VERSION_REQUIREMENT = ">=2.1"
#: Packages the worker imports besides torch that may be pip-installed if a Python lacks them.
PIP_REQUIREMENTS = ("scipy>=1.7",)
#: Slicer's own builds, also needed by the worker: checked, never installed or replaced from here.
SLICER_REQUIREMENTS = ("numpy>=1.23", "SimpleITK>=2.2")


class DependencyError(RuntimeError):
    """A requirement is missing and was not installed; the message says what to do."""


def installedVersion(distribution: str) -> Optional[str]:
    importlib.invalidate_caches()
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _release(version: str) -> tuple:
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3])


def satisfies(version: str, specifier: str) -> bool:
    """Does `version` meet `specifier` (e.g. ">=2.1")? Uses `packaging` where available."""
    try:
        from packaging.specifiers import SpecifierSet

        return SpecifierSet(specifier).contains(version, prereleases=True)
    except ImportError:
        match = re.fullmatch(r"\s*>=\s*([\d.]+)\s*", specifier)
        return match is not None and _release(version) >= _release(match.group(1))


def splitRequirement(requirement: str) -> tuple:
    name = re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0)
    return name, requirement[len(name):].strip()


def missingRequirements(requirements: Sequence[str]) -> List[str]:
    missing = []
    for requirement in requirements:
        name, specifier = splitRequirement(requirement)
        version = installedVersion(name)
        if version is None or (specifier and not satisfies(version, specifier)):
            missing.append(requirement)
    return missing


def torchMissing() -> Optional[str]:
    """None if a suitable torch is installed, else why not."""
    version = installedVersion("torch")
    if version is None:
        return "PyTorch is not installed"
    if not satisfies(version, TORCH_VERSION_REQUIREMENT):
        return f"PyTorch {version} is installed but torch{TORCH_VERSION_REQUIREMENT} is needed"
    return None


def ensureDependencies(askConfirmation: bool = True) -> List[str]:
    """Install what is missing (Slicer only), asking first. Returns what was installed; raises
    `DependencyError` if something is still missing (declined, no PyTorch extension, ...)."""
    import slicer

    installed = []
    problem = torchMissing()
    if problem is not None:
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            raise DependencyError(f"{problem}. SelfSupCTDenoise installs it through the PyTorch extension: "
                                  "install 'PyTorch' from the Extensions Manager, restart Slicer, then click "
                                  "Denoise again.") from None
        if installedVersion("torch") is not None:
            raise DependencyError(f"{problem}. Open the 'PyTorch Utils' module, uninstall PyTorch, restart "
                                  "Slicer, then click Denoise again to install a suitable version.")
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
            askConfirmation=askConfirmation, torchVersionRequirement=TORCH_VERSION_REQUIREMENT)
        if torch is None:
            raise DependencyError("PyTorch was not installed, and SelfSupCTDenoise cannot run without it.")
        installed.append(f"torch {torch.__version__}")
    owned = missingRequirements(SLICER_REQUIREMENTS)
    if owned:
        raise DependencyError(f"Slicer's own {', '.join(owned)} is missing or too old: use Slicer 5.4 or later.")
    missing = missingRequirements(PIP_REQUIREMENTS)
    if missing:
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                "SelfSupCTDenoise needs these Python packages, which will be downloaded and installed once "
                "(a few minutes; afterwards it works offline):\n\n" + "\n".join(missing),
                "SelfSupCTDenoise - install Python packages"):
            raise DependencyError("Installation declined: SelfSupCTDenoise cannot run without "
                                  + ", ".join(missing) + ".")
        slicer.util.pip_install(" ".join(missing))
        installed += missing
    return installed

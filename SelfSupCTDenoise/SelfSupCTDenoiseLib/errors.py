"""Exceptions whose messages are shown to users as they are: say what is wrong and what to do."""


class SelfSupCTDenoiseError(Exception):
    """Base class of every error the engine raises on purpose."""


class InputError(SelfSupCTDenoiseError, ValueError):
    """The input image cannot be denoised (wrong dimension, not CT in HU, NaNs, unreadable...)."""


class BundleError(SelfSupCTDenoiseError):
    """A model bundle is missing, corrupt (checksum mismatch) or inconsistent."""


class Cancelled(SelfSupCTDenoiseError):
    """The user cancelled the run; nothing was written."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (what SLURM, docker and systemd send), raised like Ctrl+C so that every cleanup runs,
    and ending the run with exit status 143 instead of 130. Code that turns any KeyboardInterrupt into
    a plain one (Ray's waits do) loses the class: `received` still says that SIGTERM came."""

    received = False

    @classmethod
    def came(cls, exc: BaseException) -> bool:
        """Whether `exc` (a KeyboardInterrupt) stands for SIGTERM."""
        return isinstance(exc, cls) or cls.received

"""Exceptions whose messages are shown to users as they are: say what is wrong and what to do."""


class SelfSupCTDenoiseError(Exception):
    """Base class of every error the engine raises on purpose."""


class InputError(SelfSupCTDenoiseError, ValueError):
    """The input image cannot be denoised (wrong dimension, not CT in HU, NaNs, unreadable...)."""


class BundleError(SelfSupCTDenoiseError):
    """A model bundle is missing, corrupt (checksum mismatch) or inconsistent."""


class Cancelled(SelfSupCTDenoiseError):
    """The user cancelled the run; nothing was written."""

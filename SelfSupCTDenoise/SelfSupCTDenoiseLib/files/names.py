"""File names as the tool shows and writes them: escaped for the terminal, URL-encoded for links,
and checked against the file system's limit on a name's length before any work.

A file name may hold any byte but "/" and NUL: control characters (an escape sequence that recolours
or clears the terminal, a carriage return that overwrites the line before), bidirectional overrides
that show a name reversed, bytes that are not UTF-8 (Python holds them as surrogates, which printing
cannot encode). `shown` makes such text safe and visible on a terminal; `url_path` makes a relative
path a link that points where it says (`#`, `%`, `?` and spaces are encoded).
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path
from typing import Iterable, Optional
from urllib.parse import quote

#: Bidirectional controls (Unicode category Cf) that make a name read in another order than it is.
_BIDI = {0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)}
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
#: The longest file name most file systems allow, in bytes (ext4, XFS, Btrfs, NTFS in UTF-16 units).
DEFAULT_NAME_MAX = 255


def _escape(char: str) -> str:
    code = ord(char)
    if char in _NAMED:
        return _NAMED[char]
    if 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8, as os.fsdecode holds it
        return f"\\x{code - 0xDC00:02x}"
    category = unicodedata.category(char)
    if category in ("Cc", "Cs") or code in _BIDI:
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return char


def shown(text: object) -> str:
    """`text` (a name, a path, a message holding them) for the terminal: control characters, lone
    surrogates and bidirectional overrides written as Python escapes (`\\x1b`, `\\r`, `\\n`, `\\u202e`),
    everything else as it is. Every line the command line prints with a file name in it goes through
    this."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(map(_escape, text))


def url_path(relative: str) -> str:
    """A relative path (with "/") as a link's address: every character that is not safe in a URL
    path percent-encoded (UTF-8), so that `case#1` or `p%41` point to the file of that name."""
    return quote(relative, safe="/", errors="surrogateescape")


def name_max(folder: Path) -> int:
    """The longest file name (bytes) allowed in `folder`, or its nearest existing parent."""
    for place in (Path(folder), *Path(folder).parents):
        try:
            return int(os.pathconf(place, "PC_NAME_MAX"))
        except (OSError, ValueError, AttributeError):
            continue
    return DEFAULT_NAME_MAX


def too_long(paths: Iterable[Optional[Path]], what: str = "file") -> Optional[str]:
    """Why some of `paths` (files the run will write; None: none) cannot be created: the first whose
    name is longer than its folder allows, as one line; None when every name fits."""
    for path in paths:
        if path is None:
            continue
        size, limit = len(os.fsencode(path.name)), name_max(path.parent)
        if size > limit:
            return (f"the {what} name {shown(path.name[:24])}...{shown(path.name[-16:])} would be {size} bytes "
                    f"long, more than the {limit} the file system allows")
    return None

"""How a config version is named: by its number in the automatic sequence (1, 2, 3…) or by a
label its upload gave it (the seed's ids: `1.0`, `1.1`, `2024-06-rc1`). Pure: no MongoDB."""

import re

Ref = int | str  # a version number, or a label

# A label: letters, digits, . _ -, starting with a letter or digit, not all digits (so it can
# never be read as a number).
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")


def ref_problem(text: str) -> str | None:
    """Why `text` names no version, or None."""
    if text.isdigit():
        return None if int(text) > 0 else "version numbers start at 1"
    if _LABEL.fullmatch(text):
        return None
    return "a version is a number (1, 2, …) or a label of letters, digits, . _ - (such as 1.0)"


def parse_ref(text: str) -> Ref:
    """3 for "3", "1.0" for "1.0"; ValueError for text that names no version."""
    text = str(text).strip()
    problem = ref_problem(text)
    if problem:
        raise ValueError(f"{text!r}: {problem}")
    return int(text) if text.isdigit() else text


def is_label(ref: Ref) -> bool:
    return isinstance(ref, str)

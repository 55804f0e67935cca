"""One sentence out of jsonargparse's error reports (and out of any error a user can fix).

A config error inside a ``class_path`` choice (the data module, the balancer) reaches the user
from jsonargparse as a report on every alternative it tried: "Does not validate against any
of the Union subtypes", the subtypes, each one's error (``Expected a <class 'NoneType'>`` for
the ``None`` alternative) and the whole given value. The sentence that matters, for example
``image_size must be an integer in [16, 4096], got -8.``, is one of those lines:
:func:`inner_sentence` finds it, prefixed with the option it concerns.
"""

from __future__ import annotations

import re

#: Lines of the report that describe the alternatives, not the problem.
_NOISE = (
    "Expected a <class 'NoneType'>",
    "Expected a path but",
    "Does not validate against any of the Union subtypes",
    "Subtypes:",
    "Errors:",
    "Given value",
    "Parser key",
)


def inner_sentence(message: str) -> str:
    """The user's problem in ``message``: the first specific error of a nested jsonargparse
    report (with its option key when the report names one), else ``message`` unchanged."""
    if "\n" not in message and not message.startswith(_NOISE):
        return message
    key = re.search(r'Parser key "([^"]+)"', message)
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    found: list[str] = []
    for index, line in enumerate(lines):
        text = line[2:] if line.startswith("- ") else line
        if text.startswith(_NOISE):
            continue
        if text.startswith("Problem with given class_path") and index + 1 < len(lines):
            detail = lines[index + 1].removeprefix("- ")
            found.append(f"{text.rstrip(':')}: {detail}")
            break
        if line.startswith("- ") or not found:
            found.append(text)
            break
    if not found:
        return lines[0] if lines else message
    prefix = f"{key.group(1)}: " if key and not found[0].startswith(key.group(1)) else ""
    return prefix + found[0]


#: Errors a user can fix (a bad option value, a missing file): printed as one line, never a
#: traceback, by every sub-command.
USER_ERRORS = (ValueError, FileNotFoundError, KeyError)


def one_line(error: BaseException) -> str:
    """The user-facing sentence of an error, also when a DataLoader worker raised it (PyTorch
    then re-raises it with the worker's traceback folded into the message)."""
    message = str(error.args[0]) if error.args else str(error)
    if "Union subtypes" in message and "\n  - " in message:
        # A data module's own sentence, inside jsonargparse's report of each Union member.
        message = message.split("\n  - ", 1)[1].split("\n", 1)[0]
    if "Original Traceback" in message:
        last = [line for line in message.splitlines() if line.strip()][-1]
        message = last.split(": ", 1)[-1]
    return inner_sentence(message)

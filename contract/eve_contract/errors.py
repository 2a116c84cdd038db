"""How a pydantic validation error reads to a user: the one formatter (the trainer config, the
pipeline keys of `submit` and the operator's spec all use it). Imports pydantic's types only."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


def validation_message(err: ValidationError, *, what: str, root: str = "", values: bool = True) -> str:
    """'invalid <what>: <key>=<value>: <problem>; ...' for every problem pydantic found.

    `root` prefixes every key (the operator's "spec"); `values=False` leaves the values out
    (a spec's values are in the object itself). A cross-field rule's message names its fields.
    """
    lines = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        if not e["loc"]:
            lines.append(f"{root}: {msg}" if root else msg)
            continue
        key = ".".join(str(p) for p in (*([root] if root else []), *e["loc"]))
        if values:
            value = e.get("input")
            shown = value if not isinstance(value, dict) else "{...}"
            lines.append(f"{key}={shown!r}: {msg}")
        else:
            lines.append(f"{key}: {msg}")
    return f"invalid {what}: " + "; ".join(lines)


__all__ = ["validation_message"]

"""Canonical JSON for evidence reports (RFC 8785 "JCS"-style).

Rules: objects with keys sorted by their UTF-16 code units (as RFC 8785), no insignificant whitespace,
UTF-8 output, strings escaped as JSON requires (``\\" \\\\ \\b \\f \\n \\r \\t``, other control characters as
``\\u00xx``; everything else literal), ``true``/``false``/``null``. Numbers: integers are written exactly
(Python ``int``); floats use the ECMAScript ``Number.prototype.toString`` form of the shortest repr that
round-trips (``1e-7``, ``0.000001``, ``1e+21``, ``123.5``; ``-0.0`` is ``0``; integral floats have no
``.0``). NaN and infinities have no JSON form and are refused here; :func:`to_plain` turns them into the
strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` first.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from tracemark.foundation.errors import InvalidInput


class CanonicalJSONError(InvalidInput):
    """The value cannot be written as canonical JSON."""


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _string(s: str) -> str:
    out = ['"']
    for ch in s:
        esc = _ESCAPES.get(ch)
        if esc is not None:
            out.append(esc)
        elif ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def format_float(x: float) -> str:
    """ECMAScript Number-to-String of ``x`` (shortest round-trip digits)."""
    if math.isnan(x) or math.isinf(x):
        raise CanonicalJSONError(f"{x!r} has no JSON representation")
    if x == 0:
        return "0"
    sign = "-" if x < 0 else ""
    t = Decimal(repr(abs(x))).as_tuple()  # repr gives the shortest digits that round-trip
    digits = "".join(map(str, t.digits)).rstrip("0")
    n = len(t.digits) + t.exponent  # value = 0.<digits> * 10**n
    k = len(digits)
    if k <= n <= 21:
        body = digits + "0" * (n - k)
    elif 0 < n <= 21:
        body = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        body = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
        body = f"{mantissa}e{'+' if e >= 0 else '-'}{abs(e)}"
    return sign + body


def _utf16_key(s: str) -> bytes:
    return s.encode("utf-16-be", "surrogatepass")


def _write(value: Any, out: list[str], path: str) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(str(int(value)))
    elif isinstance(value, float):
        try:
            out.append(format_float(value))
        except CanonicalJSONError:
            raise CanonicalJSONError(f"{path or 'value'} is {value!r}, which JSON cannot represent") from None
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise CanonicalJSONError(f"{path or 'object'} has a non-string key {key!r}")
        out.append("{")
        for i, key in enumerate(sorted(value, key=_utf16_key)):
            if i:
                out.append(",")
            out.append(_string(key))
            out.append(":")
            _write(value[key], out, f"{path}.{key}" if path else key)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write(item, out, f"{path}[{i}]")
        out.append("]")
    else:
        raise CanonicalJSONError(f"{path or 'value'} has type {type(value).__name__}, not a JSON type")


def canonical_json(value: Any) -> bytes:
    """Canonical UTF-8 JSON bytes of ``value`` (see module doc)."""
    out: list[str] = []
    _write(value, out, "")
    try:
        return "".join(out).encode("utf-8")
    except UnicodeEncodeError:
        raise CanonicalJSONError("a string holds a lone surrogate, which UTF-8 cannot encode") from None


def is_canonical(data: bytes) -> bool:
    """True when ``data`` is exactly the canonical form of the JSON it holds."""
    try:
        return canonical_json(json.loads(data)) == data
    except (ValueError, CanonicalJSONError):
        return False


def to_plain(value: Any, path: str = "") -> Any:
    """Convert ``value`` to plain JSON types: NumPy scalars/arrays, tuples, ``Path`` and datetimes become
    their JSON equivalents; non-finite floats become ``"NaN"``/``"Infinity"``/``"-Infinity"``."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return float(value)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise CanonicalJSONError(f"{path or 'object'} has a non-string key {k!r}")
            out[k] = to_plain(v, f"{path}.{k}" if path else k)
        return out
    if isinstance(value, list | tuple):
        return [to_plain(v, f"{path}[{i}]") for i, v in enumerate(value)]
    module = type(value).__module__
    if (module == "numpy" or module.startswith("numpy.")) and hasattr(value, "tolist"):
        return to_plain(value.tolist(), path)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "__fspath__"):
        return str(value)
    raise CanonicalJSONError(f"{path or 'value'} has type {type(value).__name__}, not a JSON type")

"""OutputConfig.CompilerOptions: the one reader of what a request may ask of the compiler.

The API checks a request with it at CreateCompilationJob (a ValidationException); the compile
child reads the same options with it to build the target. It is plain JSON, as the service
model says, or the Python-literal form Neo's own documentation shows ({'mattr': ['+neon']}),
since users copy those examples.

Keys: Neo's `mcpu`, `mattr` and `dtype`, and one extension of this agent's, documented as
such: `layout`, "NHWC" (the default) or "NCHW", the data layout convolutions are compiled
in (see agent.compile.optimize: NHWC was faster on every published model measured, NCHW is
there to compare and for models where it is not).
"""
from __future__ import annotations

import ast
import json
from typing import Any

KEYS = ("mcpu", "mattr", "dtype", "layout")
SUPPORTED_DTYPES = ("float32", "float")
LAYOUTS = ("NHWC", "NCHW")
DEFAULT_LAYOUT = "NHWC"


class OptionsError(ValueError):
    """The options break a rule; the message names the field and the rule."""


def parse(text: str | dict | None) -> dict[str, Any]:
    """CompilerOptions' JSON object, with only the keys this device's compiler honours."""
    field = "OutputConfig.CompilerOptions"
    if not text:
        return {}
    options = dict(text) if isinstance(text, dict) else _read(text)
    if options is None:
        raise OptionsError(f"{field} must be a JSON object; got {text!r}.")
    if not isinstance(options, dict):
        raise OptionsError(f"{field} must be a JSON object; got {text!r}.")
    unknown = [key for key in options if key not in KEYS]
    if unknown:
        raise OptionsError(
            f"{field}: {', '.join(unknown)} not supported on this device; "
            f"it accepts {', '.join(KEYS)}."
        )
    if "mcpu" in options and not (isinstance(options["mcpu"], str) and options["mcpu"]):
        raise OptionsError(f"{field}: mcpu must be a non-empty string, e.g. \"skylake-avx512\".")
    mattr = options.get("mattr")
    if mattr is not None and not _is_mattr(mattr):
        raise OptionsError(
            f'{field}: mattr must be a list of strings, e.g. ["+neon", "+vfpv4"], or one string "+neon,+vfpv4".'
        )
    if "dtype" in options and options["dtype"] not in SUPPORTED_DTYPES:
        raise OptionsError(
            f"{field}: dtype {options['dtype']!r} is not supported on this device; "
            f"it accepts {', '.join(SUPPORTED_DTYPES)}."
        )
    if "layout" in options and options["layout"] not in LAYOUTS:
        raise OptionsError(
            f"{field}: layout {options['layout']!r} is not supported; it accepts {' or '.join(LAYOUTS)} "
            "(an extension of this agent's)."
        )
    return options


def _is_mattr(value: Any) -> bool:
    """LLVM feature flags, each "+feature" or "-feature"."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",")]
    return (isinstance(value, list) and bool(value)
            and all(isinstance(v, str) and len(v) > 1 and v[0] in "+-" for v in value))


def _read(text: str) -> Any:
    for reader in (json.loads, ast.literal_eval):
        try:
            return reader(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return None

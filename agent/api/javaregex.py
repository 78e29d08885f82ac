"""Java regular expressions, as botocore's service models carry them, run in Python.

AWS checks `pattern` constraints with java.util.regex and `matches()` (the whole value). The
`regex` module understands the syntax (\\p{L}, \\p{Z}, ...), but three meanings differ:

- Java's \\d \\w \\s (and \\D \\W \\S) are ASCII-only; Python's are Unicode. Without care
  `\\d{12}` would take an account id written in Arabic-Indic digits.
- Java's `.` stops at every line terminator (\\n \\r \\u0085 \\u2028 \\u2029), not only \\n.
- Java has \\Q...\\E quoting; `regex` does not.
- Java spells a character beyond the BMP as a UTF-16 pair (`\\uD800\\uDC00`); Python wants one
  code point (`\\U00010000`).

`translate` rewrites those pieces and copies everything else. The ASCII flag cannot do the job
because it would also shrink \\p{L} to ASCII letters. A negated shorthand inside a class
(`[\\S]`, `[\\w:]` is fine) cannot be spelled as a class member, so such a class becomes an
alternation (or lookaheads, for a negated class). Java's nested classes (`[a[b]]`) and `&&`
are not translated; no pattern in the sagemaker model uses them.
"""
from __future__ import annotations

import functools

import regex

# Java's ASCII meanings of the shorthand classes, as class contents.
_SHORTHAND = {"d": "0-9", "w": "a-zA-Z_0-9", "s": " \\t\\n\\x0B\\f\\r"}
_JAVA_DOT = "[^\\n\\r\\x85\\u2028\\u2029]"
_SURROGATE_PAIR = regex.compile(r"\\u(D[89AB][0-9A-F]{2})\\u(D[C-F][0-9A-F]{2})", regex.IGNORECASE)


@functools.lru_cache(maxsize=None)
def compile_pattern(pattern: str) -> "regex.Pattern[str]":
    """Compile a model pattern once; use `.fullmatch` as Java's matches() does."""
    return regex.compile(translate(pattern))


def translate(pattern: str) -> str:
    pattern = _SURROGATE_PAIR.sub(_join_pair, pattern)
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            nxt = pattern[i + 1]
            if nxt == "Q":
                end = pattern.find("\\E", i + 2)
                end = n if end < 0 else end
                out.append(regex.escape(pattern[i + 2 : end]))
                i = end + 2
                continue
            if nxt.lower() in _SHORTHAND:
                neg = "^" if nxt.isupper() else ""
                out.append(f"[{neg}{_SHORTHAND[nxt.lower()]}]")
            else:
                out.append(c + nxt)
            i += 2
        elif c == "[":
            text, i = _translate_class(pattern, i)
            out.append(text)
        elif c == ".":
            out.append(_JAVA_DOT)
            i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _translate_class(pattern: str, start: int) -> tuple[str, int]:
    """Translate the class that opens at `start`; return it and the index after its `]`."""
    i = start + 1
    negated = i < len(pattern) and pattern[i] == "^"
    if negated:
        i += 1
    members: list[str] = []  # class contents, copied or with shorthands expanded
    excluded: list[str] = []  # contents of negated shorthands (\S -> " \t...") met inside
    first = True
    while i < len(pattern):
        c = pattern[i]
        if c == "]" and not first:
            break
        first = False
        if c == "\\" and i + 1 < len(pattern):
            nxt = pattern[i + 1]
            if nxt.lower() in _SHORTHAND:
                (excluded if nxt.isupper() else members).append(_SHORTHAND[nxt.lower()])
            else:
                members.append(c + nxt)
            i += 2
        else:
            members.append("\\[" if c == "[" else c)
            i += 1
    else:
        raise regex.error(f"unterminated character class in {pattern!r}")
    end = i + 1
    body = "".join(members)
    if not excluded:
        return f"[{'^' if negated else ''}{body}]", end
    if not negated:  # in body, or outside any one of the excluded sets
        options = ([f"[{body}]"] if body else []) + [f"[^{e}]" for e in excluded]
        return "(?:" + "|".join(options) + ")", end
    # negated: not in body, and inside every excluded set
    checks = ([f"(?![{body}])"] if body else []) + [f"(?=[{e}])" for e in excluded[:-1]]
    return "(?:" + "".join(checks) + f"[{excluded[-1]}])", end


def _join_pair(match: "regex.Match[str]") -> str:
    high, low = int(match.group(1), 16), int(match.group(2), 16)
    return f"\\U{0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00):08X}"

"""Java pattern semantics, as AWS applies the model's patterns."""
from __future__ import annotations

import pytest

from agent.api.javaregex import compile_pattern, translate
from agent.api.shapes import service_model


def all_model_patterns() -> set[str]:
    model = service_model()
    return {model.shape_for(name).metadata.get("pattern") for name in model.shape_names} - {None}


def test_every_pattern_in_the_sagemaker_model_compiles():
    patterns = all_model_patterns()
    assert len(patterns) > 100
    for pattern in patterns:
        compile_pattern(pattern)


@pytest.mark.parametrize(
    "pattern, text, matches",
    [
        (r"\d{3}", "123", True),
        (r"\d{3}", "١٢٣", False),  # Java's \d is ASCII
        (r"\w+", "abc_9", True),
        (r"\w+", "é", False),
        (r"\s", "\u00a0", False),
        (r"\S+", "\u00a0", True),
        (r"[\w:]+", "sha256:ab", True),
        (r"[\S]+", "a b", False),
        (r"[\S\s]+", "any\nthing at\tall", True),
        (r"[^\S]", " ", True),
        (r"[^\S]", "x", False),
        (r"[^a\S]", "a", False),
        (".*", "a\rb", False),  # Java's . stops at every line terminator
        (".*", "a\u2028b", False),
        (".*", "a\x00b", True),
        (r"[.]", "x", False),  # a dot in a class is a dot
        (r"\Qa.b\E", "a.b", True),
        (r"\Qa.b\E", "axb", False),
        (r"[\p{L}\p{Z}\p{N}]+", "név 日本 ٣", True),
        (r"[\u0020-\uD7FF\uE000-\uFFFD\uD800\uDC00-\uDBFF\uDFFF\t]*", "a😀b", True),
        (r"[\u0020-\uD7FF\uE000-\uFFFD\uD800\uDC00-\uDBFF\uDFFF\t]*", "a\x01b", False),
        (r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", "job--1", True),
        (r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", "job-", False),
    ],
)
def test_java_meanings(pattern, text, matches):
    assert bool(compile_pattern(pattern).fullmatch(text)) is matches, translate(pattern)

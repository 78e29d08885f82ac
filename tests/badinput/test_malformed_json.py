"""Bodies that are not what they claim: truncated, nested 10^5 deep, numbers past any type,
invalid UTF-8, NaN, a megabyte of unknown members, random bytes; over HTTP and MQTT.

Each is answered with a SageMaker error in SageMaker's form (SerializationException for what
is not a JSON object, ValidationException for what is one but breaks a rule), never with a 500
or a traceback; the agent answers ListCompilationJobs after every one; no refused body leaves a
job behind; and the process's memory does not grow with what it was sent.
tests/transports/test_http_protocol.py and tests/transports/test_topics.py hold the protocol's
own refusals (no Content-Length, 413, 411, a few bad bodies); this is the corpus.
"""
from __future__ import annotations

import json

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.transports.http import MAX_BODY_BYTES
from tests.badinput.conftest import MQTT_MAX_PAYLOAD, http_error, mqtt_error, tally, valid_body

pytestmark = pytest.mark.badinput

CLEAN = {"SerializationException", "ValidationException", "ResourceNotFound"}
VALID = json.dumps(valid_body("json-base")).encode()
ANSWER_LIMIT = 16 * 1024  # no refusal, whatever it was sent, is longer than this


def refused_both_ways(served, body: bytes, operation: str = "CreateCompilationJob",
                      codes: set[str] = CLEAN) -> tuple[str, str]:
    """Send `body` over HTTP and, when it fits, over MQTT; both must refuse it cleanly."""
    status, code, message = http_error(served.post(body, operation))
    assert status in (400, 413) and code in codes | {"RequestTooLargeException"}, (status, code, message)
    assert len(message) < ANSWER_LIMIT
    if len(body) <= MQTT_MAX_PAYLOAD:
        mqtt_code, mqtt_message = mqtt_error(served.publish(body, operation), operation)
        assert mqtt_code in codes, (mqtt_code, mqtt_message)
        assert len(mqtt_message) < ANSWER_LIMIT
    return code, message


DEEP = {
    "arrays nested 10^5 deep": b"[" * 100_000,
    "objects nested 10^5 deep": b'{"a":' * 100_000,
    "arrays nested 10^6 deep (HTTP only: over MQTT's limit)": b"[" * 1_000_000,
    "a member holding arrays nested 10^5 deep": b'{"CompilationJobName": ' + b"[" * 100_000,
    "a member holding arrays nested 950 deep, closed (parses; must not overflow while shown)":
        b'{"CompilationJobName": ' + b"[" * 950 + b"]" * 950 + b"}",
    "a list member holding objects nested 900 deep, closed":
        b'{"Tags": [' + b'{"a":' * 900 + b"1" + b"}" * 900 + b"]}",
}
NUMBERS = {
    "an integer of 5000 digits": b'{"MaxResults": 1' + b"0" * 5000 + b"}",
    "an integer of 4300 digits (Python's limit)": b'{"MaxResults": 1' + b"0" * 4299 + b"}",
    "2^64": b'{"MaxResults": 18446744073709551616}',
    "-2^63 - 1": b'{"MaxResults": -9223372036854775809}',
    "1e999 (infinity)": b'{"MaxResults": 1e999}',
    "-1e999": b'{"MaxResults": -1e999}',
    "1e-999": b'{"MaxResults": 1e-999}',
    "NaN": b'{"MaxResults": NaN}',
    "Infinity": b'{"MaxResults": Infinity}',
    "NaN as a timestamp": b'{"CreationTimeAfter": NaN}',
    "a year-10000 ISO timestamp": b'{"CreationTimeAfter": "10000-01-01T00:00:00"}',
}
ENCODINGS = {
    "invalid UTF-8": b'{"NameContains": "\xff\xfe\xfd"}',
    "an overlong UTF-8 slash": b'{"NameContains": "\xc0\xaf"}',
    "a lone continuation byte": b'{"NameContains": "\x80"}',
    "a UTF-8 byte order mark": b"\xef\xbb\xbf{}",
    "UTF-16 with its byte order mark": "\ufeff{\"MaxResults\": 1}".encode("utf-16"),
    "UTF-32": '{"MaxResults": "x"}'.encode("utf-32"),
    "a NUL in a member name": b'{"Max\x00Results": 1}',
    "a lone surrogate escaped": b'{"NameContains": "\\ud800"}',
    "a control character in a string": b'{"NameContains": "a\x01b"}',
    "latin-1": '{"NameContains": "\xe9t\xe9"}'.encode("latin-1"),
}
SHAPES = {
    "an array": b"[1, 2]",
    "a string": b'"ListCompilationJobs"',
    "null": b"null",
    "a number": b"42",
    "two objects": b"{}{}",
    "a trailing comma": b'{"MaxResults": 1,}',
    "single quotes": b"{'MaxResults': 1}",
    "a comment": b'{"MaxResults": 1 /* ten */}',
    "duplicate members, the last one wrong": b'{"MaxResults": 1, "MaxResults": "one"}',
    "a megabyte string in a member": b'{"NameContains": "' + b"a" * (MAX_BODY_BYTES - 64) + b'"}',
}


@pytest.mark.parametrize("body", DEEP.values(), ids=DEEP.keys())
def test_deep_nesting_is_refused_not_a_stack_overflow(served, body):
    code, _ = refused_both_ways(served, body, "ListCompilationJobs")
    tally("Malformed JSON: nested 900 to 10^6 levels deep (HTTP and MQTT)", 2 if len(body) <= MQTT_MAX_PAYLOAD else 1)


@pytest.mark.parametrize("body", NUMBERS.values(), ids=NUMBERS.keys())
def test_numbers_past_any_type_are_refused(served, body):
    code, message = refused_both_ways(served, body, "ListCompilationJobs")
    assert "Member must" in message or "not valid JSON" in message, message
    tally("Malformed JSON: numbers past any type, NaN, infinities (HTTP and MQTT)", 2)


@pytest.mark.parametrize("body", ENCODINGS.values(), ids=ENCODINGS.keys())
def test_broken_text_encodings_are_refused_or_read_as_json_reads_them(served, body):
    status, _, answer = served.post(body, "ListCompilationJobs")
    if status == 200:  # json reads UTF-16/32 by their marks; then it is a valid request
        assert "CompilationJobSummaries" in answer
    else:
        assert status == 400 and answer["__type"] in CLEAN, answer
    topic, answer = served.publish(body, "ListCompilationJobs")
    assert topic.endswith(("/accepted", "/rejected")) and answer.get("error", {}).get("code") != "InternalFailure"
    tally("Malformed JSON: invalid UTF-8, other encodings, control characters (HTTP and MQTT)", 2)


@pytest.mark.parametrize("body", SHAPES.values(), ids=SHAPES.keys())
def test_bodies_that_are_not_one_json_object_are_refused(served, body):
    refused_both_ways(served, body, "ListCompilationJobs")
    tally("Malformed JSON: not one JSON object, or JSON5 and other near-JSON (HTTP and MQTT)", 2)


def test_every_truncation_of_a_valid_body_is_refused(served):
    before = served.job_count()
    for end in range(1, len(VALID)):
        body = VALID[:end]
        if not body.strip():
            continue
        refused_both_ways(served, body)
    assert served.job_count() == before
    tally("Malformed JSON: every truncation of a valid CreateCompilationJob (HTTP and MQTT)", 2 * (len(VALID) - 1))


def wide_body(limit: int = MAX_BODY_BYTES) -> tuple[bytes, int]:
    """A JSON object of as many unknown members as fit in `limit` bytes, and how many."""
    members: dict[str, int] = {}
    size = 2
    while True:
        key = f"Unknown{len(members)}"
        size += len(key) + 7  # "key": 0,<space>
        if size > limit:
            break
        members[key] = 0
    body = json.dumps(members).encode()
    assert len(body) <= limit
    return body, len(members)


def test_a_megabyte_of_unknown_members_gets_a_short_answer(served):
    body, count = wide_body()
    code, message = refused_both_ways(served, body, "ListCompilationJobs")
    assert code == "ValidationException" and message.startswith(f"{count} validation errors detected: ")
    assert message.endswith(f"; and {count - 10} more")
    tally("Malformed JSON: 1 MiB of unknown members (HTTP)", 1)


def test_oversized_bodies_are_refused_unread_on_both_transports(served):
    status, code, _ = http_error(served.post(b"{" + b" " * MAX_BODY_BYTES + b"}"))
    assert (status, code) == (413, "RequestTooLargeException")
    code, message = mqtt_error(served.publish(b"{" + b" " * MQTT_MAX_PAYLOAD + b"}"))
    assert code == "ValidationException" and str(MQTT_MAX_PAYLOAD) in message
    tally("Oversized bodies: past 1 MiB over HTTP, past 128 KiB over MQTT", 2)


# --- random damage ------------------------------------------------------------------------------
@st.composite
def damaged(draw) -> bytes:
    """A valid body with bytes cut, inserted or changed, or random bytes altogether."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(min_size=1, max_size=600))
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["cut", "insert", "change", "flip"]))
        if action == "cut":
            del data[at:at + draw(st.integers(1, 20))]
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8) | st.sampled_from(
                [b"{", b"}", b"[", b"]", b'"', b"\\", b",", b":", b"\\u", b"\xff", b"\x00", b"null", b"NaN"]))
        elif action == "change":
            data[at] = draw(st.integers(0, 255))
        elif data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        if not data:
            data = bytearray(b"{")
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damaged())
def test_damaged_bodies_are_answered_cleanly(served, body):
    before = served.job_count()
    status, _, answer = served.post(body)
    accepted = int(status == 200)
    if not accepted:
        assert status == 400 and answer["__type"] in CLEAN | {"ResourceInUse"}, answer
    topic, mqtt_answer = served.publish(body)
    if topic.endswith("/rejected"):
        assert mqtt_answer["error"]["code"] in CLEAN | {"ResourceInUse"}, mqtt_answer
    else:
        accepted += 1
    # A damaged body may still be a valid request (a changed letter in a name): then, and only
    # then, a job exists for it.
    assert served.job_count() == before + accepted
    tally("Damaged bodies: a valid body with bytes cut, inserted, changed or flipped, or random bytes (HTTP)", 1)
    tally("Damaged bodies: a valid body with bytes cut, inserted, changed or flipped, or random bytes (MQTT)", 1)


def test_memory_does_not_grow_with_what_the_agent_is_sent(served):
    """Thirty 1 MiB bodies of each kind that costs the parser most; the process keeps its size."""
    process = psutil.Process()
    worst = [b"[" * MAX_BODY_BYTES, b'{"NameContains": "' + b"a" * (MAX_BODY_BYTES - 64) + b'"}',
             wide_body()[0]]
    for body in worst:  # once first: the allocator's arenas, hypothesis' and pytest's own growth
        served.post(body, "ListCompilationJobs")
    baseline = process.memory_info().rss
    for _ in range(30):
        for body in worst:
            assert served.post(body, "ListCompilationJobs")[0] in (400, 413)
    grown_mb = (process.memory_info().rss - baseline) / 2**20
    assert grown_mb < 64, f"RSS grew by {grown_mb:.0f} MiB over 90 bodies of 1 MiB"
    assert served.job_count() >= 0  # still answers
    tally("Memory: 1 MiB bodies (deep, long, wide) sent 30 times each, RSS growth bounded (HTTP)", 90)


@pytest.mark.parametrize("document", ["[" * 100_000, '{"operation": ' * 100_000, "{nope", "[]", "null"])
def test_an_iot_jobs_document_that_is_no_json_object_is_a_validation_exception(document):
    """The IoT Jobs transport reads its requests from job documents (agent/transports/iotjobs.py)."""
    from agent.errors import ValidationException
    from agent.transports.iotjobs import request_from_document

    with pytest.raises(ValidationException, match="job document"):
        request_from_document(document, "iotjob-x")
    tally("Malformed JSON: IoT Jobs documents nested 10^5 deep or not an object", 1)

"""ListCompilationJobs over 25 jobs: every sort, every filter, pagination and token misuse."""
from __future__ import annotations

import base64
import datetime as dt
import itertools
import json

import pytest

from agent.errors import ValidationException
from agent.jobs.job import Status

from agent.api import CompilationService
from agent.config import AgentConfig
from agent.jobs.store import JobStore

from tests.api.helpers import ACCOUNT, PATHS, REGION, X86_TARGETS, Clock, FakeRunner, check_output, make_body, put_in

STATUSES = list(Status)
NAMES = [f"{word}-{i}" for i, word in zip(range(25), itertools.cycle(["alpha", "Beta", "gamma", "DELTA", "job"]))]


@pytest.fixture(scope="module")
def listing(tmp_path_factory):
    """A service over its own store, shared by this module's tests: they only read."""
    state = tmp_path_factory.mktemp("listing")
    store = JobStore(state / "jobs.sqlite3", clock=Clock())
    config = AgentConfig(state_dir=state, region=REGION, account=ACCOUNT)
    yield CompilationService(store, FakeRunner(), config, target_check=X86_TARGETS)
    store.close()


@pytest.fixture(scope="module")
def jobs(listing):
    """25 jobs, created one clock tick apart, in every status, with devices and platforms."""
    service, store = listing, listing.store
    for i, name in enumerate(NAMES):
        output = {"S3OutputLocation": "s3://b/out"}
        if i % 3 == 0:
            output["TargetPlatform"] = {"Os": "LINUX", "Arch": "X86_64"}
        else:
            output["TargetDevice"] = ["ml_c5", "ml_m5"][i % 2]
        service.create_compilation_job(make_body(name, OutputConfig=output))
        status = STATUSES[i % len(STATUSES)]
        put_in(store, name, status)
        if PATHS[status]:
            store.update(name, start_time=store.get(name).creation_time + 0.5)
        if status.terminal:
            store.update(name, end_time=store.get(name).creation_time + 0.75)
    return store.query(descending=False)


def list_all(service, **request) -> list[str]:
    """Follow NextToken to the end; check every page against the output shape."""
    names, token, pages = [], None, 0
    limit = request.get("MaxResults", 10)
    while True:
        body = dict(request, **({"NextToken": token} if token else {}))
        answer = service.list_compilation_jobs(body)
        check_output("ListCompilationJobs", answer)
        page = [s["CompilationJobName"] for s in answer["CompilationJobSummaries"]]
        token = answer.get("NextToken")
        assert len(page) == limit if token else len(page) <= limit
        names += page
        pages += 1
        if not token:
            return names
        assert pages < 100


def expected(jobs, sort_by="CreationTime", order="Descending", keep=lambda job: True) -> list[str]:
    key = {
        "CreationTime": lambda job: (job.creation_time, job.seq),
        "Name": lambda job: (job.name.lower(), job.seq),
        "Status": lambda job: (job.status.value, job.seq),
    }[sort_by]
    chosen = sorted((job for job in jobs if keep(job)), key=key, reverse=order == "Descending")
    return [job.name for job in chosen]


def test_the_defaults(listing, jobs):
    first = listing.list_compilation_jobs({})
    assert len(first["CompilationJobSummaries"]) == 10 and "NextToken" in first
    assert list_all(listing) == expected(jobs)  # CreationTime, Descending


@pytest.mark.parametrize("sort_by", ["Name", "CreationTime", "Status"])
@pytest.mark.parametrize("order", ["Ascending", "Descending"])
@pytest.mark.parametrize("max_results", [1, 7, 10, 25, 100])
def test_every_sort_and_page_size(listing, jobs, sort_by, order, max_results):
    names = list_all(listing, SortBy=sort_by, SortOrder=order, MaxResults=max_results)
    assert names == expected(jobs, sort_by, order)


def test_summaries(listing, jobs):
    summaries = {s["CompilationJobName"]: s for s in listing.list_compilation_jobs({"MaxResults": 100})["CompilationJobSummaries"]}
    for i, job in enumerate(jobs):
        item = summaries[job.name]
        assert item["CompilationJobArn"] == job.arn
        assert item["CompilationJobStatus"] == job.status.value
        assert item["CreationTime"] == job.creation_time and item["LastModifiedTime"] == job.last_modified_time
        assert ("CompilationStartTime" in item) == (job.start_time is not None)
        assert ("CompilationEndTime" in item) == (job.end_time is not None)
        target = job.request["OutputConfig"]
        if "TargetDevice" in target:
            assert item["CompilationTargetDevice"] == target["TargetDevice"]
            assert not any(k.startswith("CompilationTargetPlatform") for k in item)
        else:
            assert (item["CompilationTargetPlatformOs"], item["CompilationTargetPlatformArch"]) == ("LINUX", "X86_64")
            assert "CompilationTargetDevice" not in item and "CompilationTargetPlatformAccelerator" not in item


def iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat()


def created(j, i):
    return j[i].creation_time


def modified(j, i):
    return j[i].last_modified_time


# name: (request members from the jobs, the jobs' predicate from the jobs)
FILTERS = {
    "created-after": (
        lambda j: {"CreationTimeAfter": created(j, 5)},
        lambda j: lambda x: x.creation_time > created(j, 5),
    ),
    "created-before": (
        lambda j: {"CreationTimeBefore": created(j, 5)},
        lambda j: lambda x: x.creation_time < created(j, 5),
    ),
    "created-window-iso": (
        lambda j: {"CreationTimeAfter": iso(created(j, 3)), "CreationTimeBefore": iso(created(j, 20))},
        lambda j: lambda x: created(j, 3) < x.creation_time < created(j, 20),
    ),
    "modified-after": (
        lambda j: {"LastModifiedTimeAfter": modified(j, 12)},
        lambda j: lambda x: x.last_modified_time > modified(j, 12),
    ),
    "modified-before": (
        lambda j: {"LastModifiedTimeBefore": modified(j, 12)},
        lambda j: lambda x: x.last_modified_time < modified(j, 12),
    ),
    "name": (lambda j: {"NameContains": "ALPHA"}, lambda j: lambda x: "alpha" in x.name.lower()),
    "name-digits": (lambda j: {"NameContains": "1"}, lambda j: lambda x: "1" in x.name),
    "name-none": (lambda j: {"NameContains": "zzz"}, lambda j: lambda x: False),
    "combined": (
        lambda j: {"NameContains": "a", "StatusEquals": "COMPLETED", "CreationTimeAfter": created(j, 0)},
        lambda j: lambda x: "a" in x.name.lower() and x.status == Status.COMPLETED and x.creation_time > created(j, 0),
    ),
}
FILTERS.update(
    {f"status-{s.value}": (lambda j, s=s: {"StatusEquals": s.value}, lambda j, s=s: lambda x: x.status == s) for s in Status}
)


@pytest.mark.parametrize("name", sorted(FILTERS))
@pytest.mark.parametrize("sort_by", ["Name", "CreationTime", "Status"])
def test_every_filter(listing, jobs, name, sort_by):
    make_request, make_keep = FILTERS[name]
    want = expected(jobs, sort_by, "Ascending", make_keep(jobs))
    assert list_all(listing, SortBy=sort_by, SortOrder="Ascending", MaxResults=4, **make_request(jobs)) == want
    if name != "name-none":
        assert want


def test_max_results_may_change_between_pages(listing, jobs):
    first = listing.list_compilation_jobs({"MaxResults": 3, "SortBy": "Name"})
    second = listing.list_compilation_jobs({"MaxResults": 50, "SortBy": "Name", "NextToken": first["NextToken"]})
    names = [s["CompilationJobName"] for s in first["CompilationJobSummaries"] + second["CompilationJobSummaries"]]
    assert names == expected(jobs, "Name") and "NextToken" not in second


def test_an_empty_store(service):
    assert service.list_compilation_jobs({}) == {"CompilationJobSummaries": []}
    check_output("ListCompilationJobs", {"CompilationJobSummaries": []})


def forge(token: str, **changes) -> str:
    data = json.loads(base64.urlsafe_b64decode(token))
    data.update(changes)
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode()


@pytest.fixture(scope="module")
def token(listing, jobs) -> str:
    return listing.list_compilation_jobs({"MaxResults": 2, "SortBy": "Name", "StatusEquals": "FAILED"})["NextToken"]


@pytest.mark.parametrize(
    "other",
    [
        {"SortBy": "Status", "StatusEquals": "FAILED"},
        {"SortBy": "Name"},
        {"SortBy": "Name", "StatusEquals": "FAILED", "SortOrder": "Ascending"},
        {"SortBy": "Name", "StatusEquals": "FAILED", "NameContains": "a"},
        {"SortBy": "Name", "StatusEquals": "FAILED", "CreationTimeAfter": 5},
        {},
    ],
)
def test_a_token_from_another_query(listing, token, other):
    with pytest.raises(ValidationException) as caught:
        listing.list_compilation_jobs(dict(other, NextToken=token))
    assert caught.value.message == "Invalid pagination token"


def test_the_token_is_good_for_its_own_query(listing, token):
    assert listing.list_compilation_jobs({"SortBy": "Name", "StatusEquals": "FAILED", "NextToken": token})


def test_the_same_query_spelled_with_an_iso_time_keeps_its_token(listing, jobs):
    after = jobs[0].creation_time
    first = listing.list_compilation_jobs({"MaxResults": 2, "CreationTimeAfter": after})
    second = listing.list_compilation_jobs({"MaxResults": 2, "CreationTimeAfter": iso(after), "NextToken": first["NextToken"]})
    assert second["CompilationJobSummaries"]


@pytest.mark.parametrize(
    "bad",
    [
        "garbage!",
        "bm90IGpzb24=",  # "not json"
        base64.urlsafe_b64encode(b"[1, 2]").decode(),
        base64.urlsafe_b64encode(b'{"offset": 2}').decode(),
        "\u00e9\u00e9",
        "a" * 8192,
    ],
)
def test_garbage_tokens(listing, jobs, bad):
    with pytest.raises(ValidationException, match="^Invalid pagination token$"):
        listing.list_compilation_jobs({"NextToken": bad})


@pytest.mark.parametrize("offset", [-1, "5", True, 2.5, None])
def test_forged_offsets(listing, token, offset):
    with pytest.raises(ValidationException, match="^Invalid pagination token$"):
        listing.list_compilation_jobs({"SortBy": "Name", "StatusEquals": "FAILED", "NextToken": forge(token, offset=offset)})


def test_an_offset_past_the_end_is_an_empty_last_page(listing, token):
    answer = listing.list_compilation_jobs({"SortBy": "Name", "StatusEquals": "FAILED", "NextToken": forge(token, offset=1000)})
    assert answer == {"CompilationJobSummaries": []}


@pytest.mark.parametrize(
    "request_body, fragment",
    [
        ({"MaxResults": 0}, "Member must have value greater than or equal to 1"),
        ({"MaxResults": 101}, "Member must have value less than or equal to 100"),
        ({"SortBy": "LastModifiedTime"}, "Member must satisfy enum value set: [Name, CreationTime, Status]"),
        ({"SortOrder": "Up"}, "Member must satisfy enum value set: [Ascending, Descending]"),
        ({"StatusEquals": "DONE"}, "Member must satisfy enum value set"),
        ({"NameContains": "a b"}, "Member must satisfy regular expression pattern: ^[a-zA-Z0-9\\-]+$"),
        ({"CreationTimeAfter": "last tuesday"}, "Member must be a timestamp"),
        ({"NextToken": "x" * 8193}, "Member must have length less than or equal to 8192"),
    ],
)
def test_list_requests_are_validated(listing, request_body, fragment):
    with pytest.raises(ValidationException) as caught:
        listing.list_compilation_jobs(request_body)
    assert fragment in caught.value.message

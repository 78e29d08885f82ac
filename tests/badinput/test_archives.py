"""Hostile model archives, through agent.storage.safe_extract and the pipeline's fetch stage.

tests/storage/test_archive.py has one archive per rule (absolute path, '..', links, devices,
fifo, duplicates, counts, sizes, not a tar). This is the corpus beyond it: compression bombs,
10^5 members, pax and GNU headers that rename, resize or are themselves the bomb, links used as
a first step, and arbitrary member lists from hypothesis. Every one is refused with
ClientError InputConfiguration naming the member and the rule, before a byte lands on disk,
in bounded time and memory (the bombs run in a child process whose peak RSS is read back).
"""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import pipeline
from agent.errors import ClientError
from agent.jobs.job import Job
from agent.storage.archive import MAX_EXTENDED_HEADER_BYTES, MAX_EXTENDED_HEADER_RUN, safe_extract
from tests.badinput.conftest import tally

pytestmark = pytest.mark.badinput

SMALL = {"max_total_bytes": 16 << 20, "max_members": 1000}
REAL = {"max_total_bytes": pipeline.MAX_EXTRACTED_BYTES, "max_members": pipeline.MAX_ARCHIVE_MEMBERS}
BOMB_RSS_MB = 64  # a refused bomb costs the child less than this above a bare interpreter's
BOMB_SECONDS = 20.0  # on a loaded 2-core machine; each takes well under a second unloaded


def header(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE, fmt: int = tarfile.USTAR_FORMAT,
           linkname: str = "", pax: dict[str, str] | None = None) -> bytes:
    """One member's header block(s) as tarfile writes them (extended headers included)."""
    info = tarfile.TarInfo(name)
    info.size, info.type, info.linkname = size, kind, linkname
    if pax:
        info.pax_headers = pax
    return info.tobuf(format=fmt, encoding="utf-8", errors="surrogateescape")


def raw_extended(kind: bytes, payload_size: int, fill: bytes = b"\0", name: str = "././@PaxHeader") -> bytes:
    """An extended header (pax or GNU long name) declaring `payload_size` bytes, and those bytes."""
    block = header(name, payload_size, kind)
    data = fill * payload_size
    return block + data + b"\0" * (-payload_size % 512)


def data_block(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 512)


def write_tgz(path: Path, *parts: bytes, level: int = 6) -> Path:
    with gzip.open(path, "wb", compresslevel=level) as out:
        for part in parts:
            out.write(part)
        out.write(b"\0" * 1024)
    return path


def refused(archive: Path, dest: Path, limits=SMALL) -> str:
    with pytest.raises(ClientError) as caught:
        safe_extract(archive, dest, **limits)
    assert caught.value.keyword == "InputConfiguration"
    assert not dest.exists() or not any(dest.rglob("*")), "something was written before the refusal"
    return caught.value.detail


CHILD = """
import json, resource, sys, time
from pathlib import Path
from agent.storage.archive import safe_extract
from agent.errors import ClientError
start = time.perf_counter()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    safe_extract(Path(sys.argv[1]), Path(sys.argv[2]), max_total_bytes=int(sys.argv[3]), max_members=int(sys.argv[4]))
    said = "extracted"
except ClientError as exc:
    said = exc.reason
except BaseException as exc:
    said = "UNEXPECTED " + type(exc).__name__ + ": " + str(exc)[:300]
print(json.dumps({"said": said, "seconds": time.perf_counter() - start,
                  "rss_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024}))
"""


def refused_in_a_child(archive: Path, dest: Path, limits=SMALL) -> dict:
    """safe_extract in its own process: what it said, how long it took, how much memory it added."""
    done = subprocess.run([sys.executable, "-c", CHILD, str(archive), str(dest), str(limits["max_total_bytes"]),
                           str(limits["max_members"])], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["said"].startswith("ClientError: InputConfiguration: Unsafe archive member '"), outcome
    assert outcome["seconds"] < BOMB_SECONDS and outcome["rss_mb"] < BOMB_RSS_MB, outcome
    assert not dest.exists() or not any(dest.rglob("*"))
    return outcome


# --- bombs ---------------------------------------------------------------------------------------
def test_a_compression_bomb_stops_at_the_limit_without_writing(tmp_path):
    """64 MiB of zeros in a 64 KiB .tar.gz against a 16 MiB limit; then 10 MiB twice (each fits)."""
    archive = write_tgz(tmp_path / "bomb.tar.gz", header("model.onnx", 64 << 20), b"\0" * (64 << 20), level=9)
    assert archive.stat().st_size < 128 << 10
    outcome = refused_in_a_child(archive, tmp_path / "out")
    assert "member 'model.onnx'" in outcome["said"] and f"past the limit of {16 << 20} bytes" in outcome["said"]
    pair = write_tgz(tmp_path / "pair.tar.gz", header("a.onnx", 10 << 20), b"\0" * (10 << 20),
                     header("b.bin", 10 << 20), b"\0" * (10 << 20), level=9)
    outcome = refused_in_a_child(pair, tmp_path / "out2")
    assert "member 'b.bin'" in outcome["said"] and "past the limit" in outcome["said"]
    tally("Archives: compression bombs (1000:1, real data)", 2)


def test_a_member_declaring_9_gib_is_refused_by_the_fetch_stage_at_its_header(tmp_path):
    """Through the pipeline's own fetch (file://), with its real limits: 8 GiB unpacked in all."""
    archive = write_tgz(tmp_path / "model.tar.gz", header("model.onnx", 9 << 30, fmt=tarfile.GNU_FORMAT), b"\0" * 4096)
    job = Job(name="bomb", arn="arn", request={"InputConfig": {"S3Uri": archive.as_uri(), "Framework": "ONNX"}})
    started = time.perf_counter()
    with pytest.raises(ClientError) as caught:
        pipeline.fetch(job, tmp_path / "work")
    assert time.perf_counter() - started < BOMB_SECONDS
    assert caught.value.reason == ("ClientError: InputConfiguration: Unsafe archive member 'model.onnx': it takes "
                                   f"the unpacked size past the limit of {pipeline.MAX_EXTRACTED_BYTES} bytes")
    assert not (tmp_path / "work" / "model").exists()
    tally("Archives: members declaring more than the 8 GiB limit, through the fetch stage", 1)


def numbered_members(count: int) -> bytes:
    """`count` one-byte members m/000000.txt, ...: one header made by tarfile, renamed by hand
    (tarfile takes seconds for 10^5 of them)."""
    template = bytearray(header("m/000000.txt", 1))
    template[148:156] = b" " * 8  # the checksum is taken with its own field as spaces
    out = bytearray()
    for i in range(count):
        block = template.copy()
        block[2:8] = b"%06d" % i
        block[148:156] = b"%06o\0 " % sum(block)
        out += block + data_block(b"x")
    return bytes(out)


def test_ten_to_the_fifth_tiny_members_stop_at_the_member_limit(tmp_path):
    block = numbered_members(100_000)
    archive = write_tgz(tmp_path / "many.tar.gz", block)
    outcome = refused_in_a_child(archive, tmp_path / "out", REAL)
    limit = pipeline.MAX_ARCHIVE_MEMBERS
    assert f"member 'm/{limit:06d}.txt'" in outcome["said"] and f"at most {limit} members" in outcome["said"]
    tally("Archives: 10^5 members against the 10,000 limit", 1)


@pytest.fixture(scope="module")
def zeros_256_mib() -> bytes:
    """256 MiB of zeros as one gzip member (a .tar.gz may hold several, read as one stream)."""
    return gzip.compress(b"\0" * (256 << 20), compresslevel=6)


@pytest.mark.parametrize("kind, what", [
    (tarfile.XHDTYPE, "a pax header"),
    (tarfile.XGLTYPE, "a global pax header"),
    (tarfile.GNUTYPE_LONGNAME, "a GNU long name"),
    (tarfile.GNUTYPE_LONGLINK, "a GNU long link"),
])
def test_an_extended_header_declaring_256_mib_is_refused_before_it_is_read(tmp_path, kind, what, zeros_256_mib):
    """tarfile would read the whole header into memory (256 MiB from a 250 KiB file)."""
    archive = tmp_path / "hdr.tar.gz"
    archive.write_bytes(gzip.compress(header("././@PaxHeader", 256 << 20, kind)) + zeros_256_mib
                        + gzip.compress(header("model.onnx", 1) + data_block(b"x") + b"\0" * 1024))
    outcome = refused_in_a_child(archive, tmp_path / "out")
    assert f"extended header (pax or GNU long name) of {256 << 20} bytes" in outcome["said"]
    assert f"at most {MAX_EXTENDED_HEADER_BYTES} are allowed" in outcome["said"]
    tally("Archives: pax and GNU long-name headers declaring 256 MiB", 1)


def test_a_pax_header_of_digits_at_the_limit_parses_quickly(tmp_path):
    """tarfile's pax regular expressions take time in the square of a run of digits
    (CVE-2024-6232): 1 MiB of them took hours; the 8 KiB a header may have takes a fraction
    of a second, and one byte more is refused."""
    fits = write_tgz(tmp_path / "fits.tar.gz", raw_extended(tarfile.XHDTYPE, MAX_EXTENDED_HEADER_BYTES, b"1"),
                     header("model.onnx", 1), data_block(b"x"))
    started = time.perf_counter()
    [written] = safe_extract(fits, tmp_path / "out", **SMALL)  # a header tarfile cannot read is ignored
    assert written.name == "model.onnx" and time.perf_counter() - started < 5.0
    over = write_tgz(tmp_path / "over.tar.gz", raw_extended(tarfile.XHDTYPE, MAX_EXTENDED_HEADER_BYTES + 1, b"1"),
                     header("model.onnx", 1), data_block(b"x"))
    assert "extended header" in refused(over, tmp_path / "out2")
    tally("Archives: pax headers of digits (the CVE-2024-6232 shape)", 2)


def test_a_run_of_extended_headers_is_refused_not_a_recursion_error(tmp_path):
    archive = write_tgz(tmp_path / "run.tar.gz", header("././@PaxHeader", 0, tarfile.XHDTYPE) * 5000,
                        header("model.onnx", 1), data_block(b"x"))
    detail = refused(archive, tmp_path / "out")
    assert f"at most {MAX_EXTENDED_HEADER_RUN} may come before a member" in detail
    tally("Archives: 5000 pax headers in a row", 1)


# --- headers that rename, resize or retype a member ------------------------------------------------
TRICKS = {
    "pax path climbing out": ([header("innocent.onnx", 1, fmt=tarfile.PAX_FORMAT,
                                      pax={"path": "../../etc/cron.d/evil"}), data_block(b"x")],
                              "member '../../etc/cron.d/evil'", "'..' path component"),
    "pax path absolute": ([header("innocent.onnx", 1, fmt=tarfile.PAX_FORMAT, pax={"path": "/etc/passwd"}),
                           data_block(b"x")], "member '/etc/passwd'", "absolute path"),
    "pax size of 10^15": ([header("model.onnx", 1, fmt=tarfile.PAX_FORMAT, pax={"size": str(10**15)}),
                           data_block(b"x")], "member 'model.onnx'", "past the limit"),
    "global pax path for every member": ([tarfile.TarInfo.create_pax_global_header({"path": "../up"}),
                                          header("a.onnx", 1), data_block(b"x")],
                                         "member '../up'", "'..' path component"),
    "pax linkpath on a symlink": ([header("lib", 0, tarfile.SYMTYPE, fmt=tarfile.PAX_FORMAT, linkname="ok",
                                          pax={"linkpath": "/etc"})], "member 'lib'", "symbolic link (to '/etc')"),
    "GNU long name, absolute": ([header("/" + "d/" * 60 + "evil.onnx", 1, fmt=tarfile.GNU_FORMAT),
                                 data_block(b"x")], "member '/d/d/d/", "absolute path"),
    "GNU long name climbing out": ([header("a/" * 60 + "../" * 61 + "etc/evil", 1, fmt=tarfile.GNU_FORMAT),
                                    data_block(b"x")], "member 'a/a/a/", "'..' path component"),
    "GNU long link on a hard link": ([header("h", 0, tarfile.LNKTYPE, fmt=tarfile.GNU_FORMAT,
                                             linkname="/" + "x/" * 80 + "passwd")], "member 'h'", "hard link"),
    "GNU sparse member (type S)": ([header("sparse.onnx", 1, tarfile.GNUTYPE_SPARSE), data_block(b"x")],
                                   "member 'sparse.onnx'", "GNU sparse file"),
    "pax GNU sparse 1.0 member": ([header("s.onnx", 1, fmt=tarfile.PAX_FORMAT,
                                          pax={"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                                               "GNU.sparse.name": "s.onnx", "GNU.sparse.realsize": "10"}),
                                   data_block(b"1\n0\n1\n")], "member 's.onnx'", "not a regular file"),
    "an unknown member type": ([header("z.onnx", 1, b"Z"), data_block(b"x")], "member 'z.onnx'",
                               "not a regular file or directory"),
    "symlink to a directory, then a file through it": (
        [header("lib", 0, tarfile.SYMTYPE, linkname="/etc"), header("lib/cron.d/evil", 1), data_block(b"x")],
        "member 'lib'", "symbolic link (to '/etc')"),
    "hard link to a system file, then a file of its name": (
        [header("passwd", 0, tarfile.LNKTYPE, linkname="/etc/passwd"), header("passwd", 1), data_block(b"x")],
        "member 'passwd'", "hard link (to '/etc/passwd')"),
    "a directory, then a symlink of its name": (
        [header("models", 0, tarfile.DIRTYPE), header("models", 0, tarfile.SYMTYPE, linkname="/")],
        "member 'models'", "symbolic link"),
    "a pax name with a NUL": ([header("ok.onnx", 1, fmt=tarfile.PAX_FORMAT, pax={"path": "evil\x00.onnx"}),
                               data_block(b"x")], r"member 'evil\x00.onnx'", "NUL character"),
}


@pytest.mark.parametrize("parts, member, rule", TRICKS.values(), ids=TRICKS.keys())
def test_headers_that_rename_resize_or_retype_a_member_are_refused_by_name(tmp_path, parts, member, rule):
    archive = write_tgz(tmp_path / "trick.tar.gz", *parts)
    detail = refused(archive, tmp_path / "out")
    assert detail.startswith("Unsafe archive member '") and member in detail and rule in detail, detail
    tally("Archives: pax and GNU header tricks, links as a first step, odd types", 1)


def test_a_symlink_already_in_the_destination_is_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "models").symlink_to(outside)
    archive = write_tgz(tmp_path / "m.tar.gz", header("models/model.onnx", 1), data_block(b"x"))
    with pytest.raises(ClientError, match="member 'models/model.onnx': it resolves outside the extraction directory"):
        safe_extract(archive, dest, **SMALL)
    assert not any(outside.iterdir())
    tally("Archives: a symlink planted in the destination", 1)


# --- anything at all -------------------------------------------------------------------------------
SEGMENTS = st.sampled_from(["..", ".", "", "a", "b.onnx", "...", "..a", " ", "~", "lib", "\\..\\x", "é"])
NAMES = st.builds(lambda lead, parts: lead + "/".join(parts), st.sampled_from(["", "/", "./", "//"]),
                  st.lists(SEGMENTS, min_size=1, max_size=5))
KINDS = st.sampled_from([tarfile.REGTYPE, tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
                         tarfile.CHRTYPE, tarfile.FIFOTYPE, tarfile.CONTTYPE, b"Z"])
MEMBERS = st.lists(st.tuples(NAMES, KINDS, st.integers(0, 700), NAMES), min_size=1, max_size=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(members=MEMBERS, fmt=st.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]))
def test_any_member_list_is_refused_or_lands_inside_the_destination(tmp_path_factory, members, fmt):
    root = tmp_path_factory.mktemp("any")
    parts = []
    for name, kind, size, link in members:
        if not name:
            continue
        has_data = kind in (tarfile.REGTYPE, tarfile.CONTTYPE, b"Z")
        try:
            parts.append(header(name, size if has_data else 0, kind, fmt=fmt, linkname=link))
        except ValueError:  # a name this format cannot hold
            continue
        if has_data:
            parts.append(data_block(os.urandom(size)))
    archive = write_tgz(root / "any.tar.gz", *parts)
    dest = root / "dest"
    try:
        written = safe_extract(archive, dest, **SMALL)
    except ClientError as exc:
        assert exc.keyword == "InputConfiguration" and exc.detail, exc
        assert exc.detail.startswith("Unsafe archive member '") or "untar" in exc.detail, exc.detail
        written = []
    assert sorted(p.name for p in root.iterdir()) in (["any.tar.gz"], ["any.tar.gz", "dest"])
    inside = dest.resolve()
    for path in dest.rglob("*") if dest.exists() else []:
        assert not path.is_symlink() and (path.is_file() or path.is_dir()), path
        assert path.resolve().is_relative_to(inside), path
    assert all(p.resolve().is_relative_to(inside) and p.is_file() for p in written)
    tally("Archives: arbitrary member lists (names, types, sizes, links; ustar, GNU, pax)", 1)

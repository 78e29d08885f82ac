"""Archives: every unsafe shape is refused by name, good ones unpack, pack() is deterministic."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import time
from pathlib import Path

import pytest

from agent.errors import ClientError
from agent.storage.archive import NOT_A_TAR, digest, pack, safe_extract

LIMITS = {"max_total_bytes": 1 << 20, "max_members": 100}


def make_tar(path: Path, members: list[tuple[str, bytes | None, bytes]], mode: str = "w:gz") -> Path:
    """members: (name, data or None, tar type); data None for non-regular members."""
    with tarfile.open(path, mode) as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = "/etc/passwd"
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def test_good_archive_unpacks(tmp_path):
    archive = make_tar(tmp_path / "m.tar.gz", [
        ("./model.onnx", b"onnx", tarfile.REGTYPE),
        ("extra", None, tarfile.DIRTYPE),
        ("extra/labels.txt", b"cat\ndog\n", tarfile.REGTYPE),
    ])
    dest = tmp_path / "out"
    files = safe_extract(archive, dest, **LIMITS)
    assert files == [dest.resolve() / "model.onnx", dest.resolve() / "extra" / "labels.txt"]
    assert (dest / "extra" / "labels.txt").read_bytes() == b"cat\ndog\n"
    assert (dest / "model.onnx").stat().st_mode & 0o777 == 0o644


def test_plain_tar_unpacks(tmp_path):
    archive = make_tar(tmp_path / "m.tar", [("model.onnx", b"x", tarfile.REGTYPE)], mode="w")
    assert [p.name for p in safe_extract(archive, tmp_path / "out", **LIMITS)] == ["model.onnx"]


@pytest.mark.parametrize("name, data, kind, rule", [
    ("/etc/cron.d/evil", b"x", tarfile.REGTYPE, "absolute path"),
    ("../evil", b"x", tarfile.REGTYPE, "'..' path component"),
    ("models/../../evil", b"x", tarfile.REGTYPE, "'..' path component"),
    ("link", None, tarfile.SYMTYPE, "symbolic link"),
    ("hard", None, tarfile.LNKTYPE, "hard link"),
    ("tty", None, tarfile.CHRTYPE, "device file"),
    ("disk", None, tarfile.BLKTYPE, "device file"),
    ("pipe", None, tarfile.FIFOTYPE, "fifo"),
])
def test_unsafe_member_is_refused_by_name(tmp_path, name, data, kind, rule):
    archive = make_tar(tmp_path / "m.tar.gz", [("model.onnx", b"ok", tarfile.REGTYPE), (name, data, kind)])
    dest = tmp_path / "out"
    with pytest.raises(ClientError) as info:
        safe_extract(archive, dest, **LIMITS)
    assert info.value.keyword == "InputConfiguration"
    assert f"member '{name}'" in info.value.detail and rule in info.value.detail
    assert not dest.exists(), "nothing is written before every member passed"


def test_too_many_members(tmp_path):
    archive = make_tar(tmp_path / "m.tar.gz", [(f"f{i}", b"x", tarfile.REGTYPE) for i in range(4)])
    with pytest.raises(ClientError, match=r"member 'f3'.*at most 3 members"):
        safe_extract(archive, tmp_path / "out", max_total_bytes=1000, max_members=3)


def test_too_large_in_total(tmp_path):
    archive = make_tar(tmp_path / "m.tar.gz", [("a", b"x" * 600, tarfile.REGTYPE), ("b", b"y" * 600, tarfile.REGTYPE)])
    with pytest.raises(ClientError, match=r"member 'b'.*limit of 1000 bytes"):
        safe_extract(archive, tmp_path / "out", max_total_bytes=1000, max_members=10)


def test_duplicate_member(tmp_path):
    archive = make_tar(tmp_path / "m.tar.gz", [("a", b"1", tarfile.REGTYPE), ("./a", b"2", tarfile.REGTYPE)])
    with pytest.raises(ClientError, match="member './a'.*appears twice"):
        safe_extract(archive, tmp_path / "out", **LIMITS)


def test_file_and_directory_clash(tmp_path):
    archive = make_tar(tmp_path / "m.tar.gz", [("a", b"1", tarfile.REGTYPE), ("a/b", b"2", tarfile.REGTYPE)])
    with pytest.raises(ClientError, match="clashes"):
        safe_extract(archive, tmp_path / "out", **LIMITS)


@pytest.mark.parametrize("content", [
    b"this is not an archive at all" * 10,
    gzip.compress(b"gzip, but no tar inside" * 40),
])
def test_not_a_tar(tmp_path, content):
    path = tmp_path / "model.tar.gz"
    path.write_bytes(content)
    with pytest.raises(ClientError) as info:
        safe_extract(path, tmp_path / "out", **LIMITS)
    assert info.value.reason == f"ClientError: InputConfiguration: {NOT_A_TAR}"


def test_truncated_archive(tmp_path):
    archive = make_tar(tmp_path / "m.tar.gz", [("model.onnx", os.urandom(50_000), tarfile.REGTYPE)])
    archive.write_bytes(archive.read_bytes()[:20_000])
    with pytest.raises(ClientError, match="Unable to untar"):
        safe_extract(archive, tmp_path / "out", **LIMITS)


def test_pack_is_deterministic(tmp_path):
    (tmp_path / "b.so").write_bytes(b"library")
    (tmp_path / "a.json").write_text('{"inputs": []}')
    members = {"model.so": tmp_path / "b.so", "metadata.json": tmp_path / "a.json"}
    first = pack(members, tmp_path / "one.tar.gz")
    time.sleep(0.01)
    os.utime(tmp_path / "b.so", (1_000_000, 1_000_000))  # a different mtime must not matter
    os.chmod(tmp_path / "b.so", 0o755)
    second = pack(dict(reversed(members.items())), tmp_path / "two.tar.gz")
    assert first.read_bytes() == second.read_bytes()
    assert digest(first) == digest(second)
    with tarfile.open(first) as tar:
        infos = tar.getmembers()
    assert [i.name for i in infos] == ["metadata.json", "model.so"]
    assert all((i.mtime, i.uid, i.gid, i.uname, i.gname, i.mode) == (0, 0, 0, "", "", 0o644) for i in infos)


def test_pack_round_trips_through_safe_extract(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "model.so").write_bytes(os.urandom(3000))
    archive = pack({"model.so": tmp_path / "src" / "model.so"}, tmp_path / "out" / "model.tar.gz")
    [extracted] = safe_extract(archive, tmp_path / "x", **LIMITS)
    assert extracted.read_bytes() == (tmp_path / "src" / "model.so").read_bytes()
    assert not list((tmp_path / "out").glob(".*part")), "no temporary file is left behind"


@pytest.mark.parametrize("name", ["/abs", "../up", ""])
def test_pack_refuses_unsafe_names(tmp_path, name):
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(ValueError):
        pack({name: tmp_path / "f"}, tmp_path / "o.tar.gz")


def test_digest_is_blake2b(tmp_path):
    data = os.urandom(3 << 20)  # more than one read chunk
    (tmp_path / "f").write_bytes(data)
    assert digest(tmp_path / "f") == hashlib.blake2b(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert digest(tmp_path / "empty") == (
        "786a02f742015903c6c6fd852552d272912f4740e15847618a86e217f71f5419"
        "d25e1031afee585313896444934eb04b903a685b1448b755d56f701afe9be2ce")

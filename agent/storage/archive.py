"""Model tarballs in and artifact tarballs out.

    safe_extract(archive, dest, *, max_total_bytes, max_members) -> [extracted files]
    pack({"name in tar": Path}, out) -> out           deterministic .tar.gz
    digest(path) -> hex                               BLAKE2b (Neo's ModelDigests.ArtifactDigest)

A model tarball comes from a user, so extraction trusts nothing in it. Every member is checked
before any byte is written, and the archive is refused, naming the member and the rule, when it
holds an absolute path, a '..' component, a NUL in a name, a symlink or hard link, a device, fifo
or other special file (GNU sparse files included), a name twice or as both a file and a folder,
more than `max_members` members or more than `max_total_bytes` in all. Files are then written
by this module itself (mode 0644, no owners, no times), never by tarfile.extract, so nothing in
a header can reach outside `dest`. Failures are
ClientError("InputConfiguration", ...); a file that is not a tar at all gets Neo's own sentence.

The headers themselves are bounded too, before tarfile reads them (see _guarded_tarinfo): this
Python's tarfile (3.11.7) reads a pax or GNU long-name header whole into memory whatever size
it declares, runs regular expressions over it whose time grows with the square of its length
(CVE-2024-6232, fixed in 3.11.10), follows a run of such headers by recursion, and follows GNU
sparse extension blocks without end. So a 2 MB .tar.gz could take gigabytes of memory, hours
of CPU, or end in a RecursionError. Each extended header may be at most MAX_EXTENDED_HEADER_BYTES,
all of them together MAX_EXTENDED_HEADERS_TOTAL, at most MAX_EXTENDED_HEADER_RUN in a row, and
GNU sparse members are refused at their header.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath

from agent.errors import ClientError

CHUNK_BYTES = 1 << 20
NOT_A_TAR = "Unable to untar input model. Please confirm the model is a tar.gz file"
PACK_COMPRESSLEVEL = 6
PACK_FILE_MODE = 0o644
# Extended headers (pax, GNU long names). A path is at most 4096 bytes on Linux and a pax record
# of one is a few bytes more; a model archive's headers need far less. 8 KiB keeps tarfile's
# quadratic header parsing under 0.1 s a header, and 1 MiB in all still lets GNU tar's posix
# format give each of MAX_ARCHIVE_MEMBERS members its own header of times.
MAX_EXTENDED_HEADER_BYTES = 8 << 10
MAX_EXTENDED_HEADERS_TOTAL = 1 << 20
MAX_EXTENDED_HEADER_RUN = 4  # before one member: a global and a member pax header, a long name and a long link
_EXTENDED_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
                   tarfile.GNUTYPE_LONGLINK)


def safe_extract(archive: Path, dest: Path, *, max_total_bytes: int, max_members: int) -> list[Path]:
    """Unpack a .tar.gz (or .tar, .tar.bz2, .tar.xz) into `dest`, a new or empty directory.

    Returns the regular files written, in archive order.
    """
    dest = Path(dest)
    try:
        with tarfile.open(archive, "r:*", tarinfo=_guarded_tarinfo()) as tar:
            plan = _check_members(tar, max_total_bytes, max_members)
            dest.mkdir(parents=True, exist_ok=True)
            root = dest.resolve()
            written: list[Path] = []
            for member, rel in plan:
                target = root.joinpath(*rel.parts)
                if not target.resolve().is_relative_to(root):  # belt and braces: dest held a symlink
                    raise _unsafe(member.name, "resolves outside the extraction directory")
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                _write_member(tar, member, target)
                written.append(target)
            return written
    except (tarfile.ReadError, tarfile.CompressionError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ClientError("InputConfiguration", NOT_A_TAR) from exc
    except (NotADirectoryError, FileExistsError, IsADirectoryError) as exc:  # dest was not empty
        shown = os.path.relpath(exc.filename, dest) if exc.filename else "?"
        raise ClientError("InputConfiguration", f"Unsafe archive member path '{shown}': it clashes with "
                                                "what the extraction directory already holds") from exc


def _check_members(tar: tarfile.TarFile, max_total_bytes: int, max_members: int):
    """Read every header and apply every rule; returns [(member, relative path)] to extract."""
    plan: list[tuple[tarfile.TarInfo, PurePosixPath]] = []
    seen: set[PurePosixPath] = set()
    files: set[PurePosixPath] = set()
    folders: set[PurePosixPath] = set()  # given as members, or implied by a member's path
    total = 0
    for count, member in enumerate(tar, start=1):  # iterating, not getmembers(): a bomb fails early
        name = member.name
        if count > max_members:
            raise _unsafe(name, f"is one member too many: at most {max_members} members are allowed")
        path = PurePosixPath(name)
        if "\0" in name:  # only a pax header can carry one; no file system takes it
            raise _unsafe(name, "has a NUL character in its name")
        if path.is_absolute() or name.startswith("/"):
            raise _unsafe(name, "has an absolute path")
        if ".." in path.parts:
            raise _unsafe(name, "has a '..' path component")
        if member.issym():
            raise _unsafe(name, f"is a symbolic link (to '{member.linkname}')")
        if member.islnk():
            raise _unsafe(name, f"is a hard link (to '{member.linkname}')")
        if member.ischr() or member.isblk():
            raise _unsafe(name, "is a device file")
        if member.isfifo():
            raise _unsafe(name, "is a fifo")
        if member.issparse() or not (member.isreg() or member.isdir()):
            raise _unsafe(name, "is not a regular file or directory")
        rel = PurePosixPath(*[p for p in path.parts if p not in ("", ".")])
        if not rel.parts:
            continue  # "./" itself
        if rel in seen and not member.isdir():
            raise _unsafe(name, "appears twice")
        # A file and a folder of one name can't both be written: say so now, before any byte is.
        clash = next((parent for parent in rel.parents if parent in files), None)
        if clash is not None:
            raise _unsafe(name, f"clashes with member '{clash}', a file, used here as a folder")
        if member.isdir() and rel in files or not member.isdir() and rel in folders:
            raise _unsafe(name, "clashes with another member: a file and a folder of one name")
        seen.add(rel)
        (folders if member.isdir() else files).add(rel)
        folders.update(rel.parents)
        total += member.size
        if total > max_total_bytes:
            raise _unsafe(name, f"takes the unpacked size past the limit of {max_total_bytes} bytes")
        plan.append((member, rel))
    return plan


def _guarded_tarinfo() -> type[tarfile.TarInfo]:
    """A TarInfo class for one archive that checks each header before tarfile processes it.

    tarfile calls `_proc_member` for every header block it reads, extended ones included, and
    before it reads what an extended header declares; the counts live in this closure.
    """
    seen = {"run": 0, "bytes": 0}

    class GuardedTarInfo(tarfile.TarInfo):
        def _proc_member(self, tar):
            if self.type == tarfile.GNUTYPE_SPARSE:
                raise _unsafe(self.name, "is a GNU sparse file")
            if self.type not in _EXTENDED_TYPES:
                seen["run"] = 0
                return super()._proc_member(tar)
            seen["run"] += 1
            seen["bytes"] += self.size
            if self.size > MAX_EXTENDED_HEADER_BYTES:
                raise _unsafe(self.name, f"is an extended header (pax or GNU long name) of {self.size} bytes; "
                                         f"at most {MAX_EXTENDED_HEADER_BYTES} are allowed")
            if seen["run"] > MAX_EXTENDED_HEADER_RUN:
                raise _unsafe(self.name, f"is the {seen['run']}th extended header in a row; "
                                         f"at most {MAX_EXTENDED_HEADER_RUN} may come before a member")
            if seen["bytes"] > MAX_EXTENDED_HEADERS_TOTAL:
                raise _unsafe(self.name, f"takes the archive's extended headers past "
                                         f"{MAX_EXTENDED_HEADERS_TOTAL} bytes in all")
            return super()._proc_member(tar)

    return GuardedTarInfo


def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
    source = tar.extractfile(member)
    if source is None:  # cannot happen for a regular file; keep the type checker honest
        raise _unsafe(member.name, "has no data")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    with source, os.fdopen(os.open(target, flags, 0o644), "wb") as out:
        remaining = member.size
        while remaining > 0:
            chunk = source.read(min(CHUNK_BYTES, remaining))
            if not chunk:
                raise EOFError(f"archive ends inside '{member.name}'")
            out.write(chunk)
            remaining -= len(chunk)


def _unsafe(name: str, rule: str) -> ClientError:
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)  # a NUL or newline, escaped
    return ClientError("InputConfiguration", f"Unsafe archive member '{shown}': it {rule}")


def pack(members: dict[str, Path], out: Path) -> Path:
    """Write a .tar.gz of `members` whose bytes depend only on the names and file contents.

    Names are sorted; every header has mtime 0, uid/gid 0, no owner names and mode 0644; the gzip
    header has mtime 0 and no file name. (The compressed bytes also depend on zlib's version, so
    compare digests made on one machine.) Written beside `out` and renamed into place.
    """
    out = Path(out)
    for name in members:
        rel = PurePosixPath(name)
        if not name or rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"not a relative member name: {name!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as raw, \
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                              compresslevel=PACK_COMPRESSLEVEL) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(members):
                path = Path(members[name])
                info = tarfile.TarInfo(name)
                info.size = path.stat().st_size
                info.mtime = 0
                info.mode = PACK_FILE_MODE
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with path.open("rb") as src:
                    tar.addfile(info, src)
        os.replace(tmp_name, out)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return out


def digest(path: Path) -> str:
    """BLAKE2b (64-byte) hex digest of a file, read in chunks."""
    return hash_file(path, hashlib.blake2b()).hexdigest()


def hash_file(path: Path, hasher):
    """Feed the file to `hasher` (a hashlib object) in chunks; returns the hasher."""
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            hasher.update(chunk)
    return hasher

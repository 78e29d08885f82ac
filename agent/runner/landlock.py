"""Linux Landlock: an unprivileged process takes away its own access to files, TCP and signals.

    abi()                                   the kernel's Landlock ABI version, 0 where there is none
    restrict(read=, write=, hide=)          confine this thread and what it starts from now on

Landlock (Linux 5.13 and later, when the kernel's LSM list has it) grants by rules only: once
a process restricts itself, it can open a file only beneath a path a rule names, with the
rights that rule gives. `restrict` turns "read these trees, write those, but not these paths
inside them" into such rules: a tree that holds a hidden path is replaced by its entries, down
the hidden path's ancestors, leaving the hidden path itself out (entries made in those
ancestors afterwards are out too). Paths are resolved first; ones that do not exist are
skipped.

With ABI 4 and later it also handles TCP: no rule allows any, so the process can neither
connect nor bind. With ABI 6 and later it is scoped: it cannot signal processes outside its
own domain, nor reach their abstract unix sockets.

The restriction binds the calling thread and its future children only: call it while the
process has one thread (before TVM's or onnxruntime's thread pools start). It cannot be
undone, and it needs no privilege (it sets no_new_privs, as the kernel requires). The syscall
numbers are the same on every architecture Linux added them to together (x86_64, aarch64, arm).
"""
from __future__ import annotations

import ctypes
import errno
import os
import stat
from pathlib import Path
from typing import Iterable

SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH = 1
PR_SET_NO_NEW_PRIVS = 38

# <linux/landlock.h>: LANDLOCK_ACCESS_FS_*, and the ABI that added each
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
MAKE_REG, MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM = 1 << 8, 1 << 9, 1 << 10, 1 << 11, 1 << 12
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15   # ABI 2, 3, 5
FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1, 5: (1 << 16) - 1}
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1   # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1   # ABI 6
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV   # the rights a rule on a non-directory may give

READ = EXECUTE | READ_FILE | READ_DIR
WRITE = (READ | WRITE_FILE | REMOVE_DIR | REMOVE_FILE | MAKE_DIR | MAKE_REG | MAKE_SOCK | MAKE_FIFO | MAKE_SYM
         | REFER | TRUNCATE)


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class Unavailable(Exception):
    """Landlock cannot be used here; the message says why."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def abi() -> int:
    """The Landlock ABI this kernel offers; 0 where there is none."""
    return _probe()[0]


def _probe() -> tuple[int, str]:
    """(the ABI, "") or (0, why there is none)."""
    try:
        libc = _libc()
        version = libc.syscall(SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(CREATE_RULESET_VERSION))
    except (OSError, AttributeError) as exc:  # not Linux
        return 0, f"no Landlock here ({exc})"
    if version > 0:
        return int(version), ""
    code = ctypes.get_errno()
    why = {errno.ENOSYS: "this kernel has no Landlock (Linux 5.13 or later)",
           errno.EOPNOTSUPP: "Landlock is built into this kernel but not enabled (add landlock to its lsm= list)",
           errno.EPERM: "the landlock system calls are refused (a seccomp filter: the unit's SystemCallFilter)"}
    return 0, why.get(code, f"landlock_create_ruleset failed: {os.strerror(code)}")


def rules(read: Iterable[Path], write: Iterable[Path], hide: Iterable[Path]) -> list[tuple[Path, int]]:
    """(path, rights) for every rule: `read` and `write` trees, each split around the `hide`
    paths inside it. Later rules for a path inside an earlier one add to its rights (Landlock
    ORs the rights of every rule above a file)."""
    hidden = {_resolve(p) for p in hide} - {None}
    out: list[tuple[Path, int]] = []
    for paths, rights in ((read, READ), (write, WRITE)):
        for path in paths:
            resolved = _resolve(path)
            if resolved is not None:
                out += _around(resolved, rights, hidden)
    return out


def _resolve(path: Path) -> Path | None:
    try:
        return Path(path).resolve(strict=True)
    except (OSError, RuntimeError):
        return None


def _around(root: Path, rights: int, hidden: set[Path]) -> list[tuple[Path, int]]:
    """`root` with `rights`, less the hidden paths beneath it (and itself, when hidden)."""
    inside = [h for h in hidden if h == root or root in h.parents]
    if not inside:
        return [(root, rights)]
    if root in hidden:
        return []
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return []
    out: list[tuple[Path, int]] = []
    for entry in entries:
        if any(h == entry or entry in h.parents for h in inside):
            if not entry.is_symlink() and entry.is_dir():
                out += _around(entry, rights, hidden)
        else:
            out.append((entry, rights))
    return out


def restrict(read: Iterable[Path], write: Iterable[Path], hide: Iterable[Path] = ()) -> int:
    """Confine this thread and its future children to reading `read`, reading and writing
    `write`, and no TCP, signals or abstract sockets outside (as the ABI allows); the ABI
    used. Raises Unavailable where Landlock is not there, OSError when a step fails."""
    version, why = _probe()
    if version < 1:
        raise Unavailable(why)
    handled = FS_BY_ABI.get(version, FS_BY_ABI[5])
    attr = _RulesetAttr(handled_access_fs=handled,
                        handled_access_net=(NET_BIND_TCP | NET_CONNECT_TCP) if version >= 4 else 0,
                        scoped=(SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL) if version >= 6 else 0)
    size = 8 if version < 4 else 16 if version < 6 else 24
    libc = _libc()
    ruleset = libc.syscall(SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        raise _error("landlock_create_ruleset")
    try:
        for path, rights in rules(read, write, hide):
            _add(libc, ruleset, path, rights & handled)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise _error("prctl(PR_SET_NO_NEW_PRIVS)")
        if libc.syscall(SYS_RESTRICT_SELF, ruleset, ctypes.c_uint32(0)) != 0:
            raise _error("landlock_restrict_self")
    finally:
        os.close(ruleset)
    return version


def _add(libc: ctypes.CDLL, ruleset: int, path: Path, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:  # gone since it was listed, or unreadable: nothing to grant
        return
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            rights &= FILE_RIGHTS
        beneath = _PathBeneathAttr(allowed_access=rights, parent_fd=fd)
        if libc.syscall(SYS_ADD_RULE, ruleset, RULE_PATH_BENEATH, ctypes.byref(beneath), ctypes.c_uint32(0)) != 0:
            raise _error(f"landlock_add_rule({path})")
    finally:
        os.close(fd)


def _error(call: str) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, f"{call} failed: {os.strerror(code)}")

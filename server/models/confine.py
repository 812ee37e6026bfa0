"""Filesystem confinement of a worker child with Landlock (Linux 5.13+), through ctypes; no dependency.

Called in the worker before the backend's framework is imported: from then on the process may read (and map
executable) only Python's own trees, the kvserve package, system libraries and configuration, /proc, /sys, /dev,
Keras's config folder (~/.keras) and its model's folder, and may write only into its private temp directory (TMPDIR points there) and /dev/null.
A SavedModel graph's ``WriteFile`` elsewhere (or ``ReadFile`` of another user's data under /home or /work) then
fails with EACCES inside that call. Where the kernel has no Landlock (or it is disabled), the worker runs
unconfined and says why in its log: the process boundary and memory limit still hold.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path
from typing import Iterable

CREATE_RULESET, ADD_RULE, RESTRICT_SELF = 444, 445, 446  # the same numbers on x86_64 and aarch64
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH = 1
PR_SET_NO_NEW_PRIVS = 38

EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR, MAKE_REG = 1 << 4, 1 << 5, 1 << 6, 1 << 7, 1 << 8
MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM = 1 << 9, 1 << 10, 1 << 11, 1 << 12
REFER, TRUNCATE = 1 << 13, 1 << 14  # ABI 2, ABI 3

READ = EXECUTE | READ_FILE | READ_DIR
FILE_ONLY = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE  # the rights a rule on a single file may hold

SYSTEM_READABLE = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc", "/opt", "/proc", "/sys", "/dev", "/run")


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _abi(libc: ctypes.CDLL) -> int:
    version = libc.syscall(CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(CREATE_RULESET_VERSION))
    if version < 0:
        error = ctypes.get_errno()
        raise OSError(error, "Landlock is not available" + (" (disabled at boot)" if error == 95 else f": {os.strerror(error)}"))
    return int(version)


def readable_roots(model_dir: Path) -> list[Path]:
    """What the worker must read: Python, its packages (sys.path and kvserve's own folders), system files, the model."""
    import kvserve

    roots: list[str] = [*SYSTEM_READABLE, sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))]
    roots += [p for p in sys.path if p]
    roots += [os.path.dirname(p) for p in getattr(kvserve, "__path__", [])]
    for module in ("kvserve.server", "kvserve.plugins", "kvserve.proto"):
        found = sys.modules.get(module)
        roots += [os.path.dirname(p) for p in getattr(found, "__path__", [])]
    roots.append(os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras"))  # keras.json: as the converter reads it
    roots.append(str(model_dir))
    return [Path(r) for r in dict.fromkeys(roots)]


def confine(model_dir: Path, private_tmp: Path, extra_readable: Iterable[Path] = ()) -> str:
    """Restrict this process (and threads started later) to the rules above; returns a one-line description.
    Raises OSError when the kernel cannot (the caller logs it and goes on unconfined)."""
    libc = ctypes.CDLL(None, use_errno=True)
    abi = _abi(libc)
    handled = READ | WRITE_FILE | REMOVE_DIR | REMOVE_FILE | MAKE_CHAR | MAKE_DIR | MAKE_REG | MAKE_SOCK | MAKE_FIFO \
        | MAKE_BLOCK | MAKE_SYM | (REFER if abi >= 2 else 0) | (TRUNCATE if abi >= 3 else 0)
    attr = _RulesetAttr(handled)
    ruleset = libc.syscall(CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)), ctypes.c_uint32(0))
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        granted = 0
        for root in [*readable_roots(model_dir), *extra_readable]:
            granted += _allow(libc, ruleset, root, READ)
        granted += _allow(libc, ruleset, private_tmp, handled)
        granted += _allow(libc, ruleset, Path("/dev/null"), (WRITE_FILE | READ_FILE | (TRUNCATE if abi >= 3 else 0)))
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if libc.syscall(RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset)
    return f"Landlock ABI {abi}: read-only {granted - 2} trees (model folder {model_dir}), writable {private_tmp} only"


def _allow(libc: ctypes.CDLL, ruleset: int, path: Path, access: int) -> int:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return 0  # absent on this system: nothing to grant
    try:
        if not path.is_dir():
            access &= FILE_ONLY
        rule = _PathBeneathAttr(access, fd)
        if libc.syscall(ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(RULE_PATH_BENEATH), ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
            raise OSError(ctypes.get_errno(), f"landlock_add_rule failed for {path}")
        return 1
    finally:
        os.close(fd)

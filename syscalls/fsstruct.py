"""The kernel's file-metadata structures, filled from the pod's answers.

A stat-family call on a remote path is answered without running it: the
struct the program passed is filled here from the agent's StatInfo and the
call returns 0. Layouts are x86_64's (arch/x86/include/uapi/asm/stat.h and
include/uapi/linux/stat.h); tests/unit/test_fsstruct.py checks them
against what this kernel writes for a real file.
"""

from __future__ import annotations

import os
import struct

from agent_image.protocol import StatInfo

# struct stat: dev, ino, nlink (u64); mode, uid, gid (u32), pad; rdev; size, blksize,
# blocks (s64); atime, atime_nsec, mtime, ..., ctime, ...; 3 unused longs.
_STAT = struct.Struct("<QQQIIIiQqqq6q3q")
STAT_SIZE = _STAT.size  # 144

# struct statx up to stx_mnt_id; the rest (256 bytes in all) is zeros.
_STATX = struct.Struct("<IIQIIIHHQQQQ" + "qIi" * 4 + "IIIIQ")
STATX_SIZE = 256
STATX_BASIC_STATS = 0x7FF  # type, mode, nlink, uid, gid, atime, mtime, ctime, ino, size, blocks

_NS = 1_000_000_000


def pack_stat(m: StatInfo) -> bytes:
    """struct stat, as stat(2), lstat(2), fstat(2) and newfstatat(2) fill it."""
    a, an = divmod(m.atime_ns, _NS)
    t, tn = divmod(m.mtime_ns, _NS)
    c, cn = divmod(m.ctime_ns, _NS)
    return _STAT.pack(m.dev, m.ino, m.nlink, m.mode, m.uid, m.gid, 0, m.rdev, m.size,
                      m.blksize, m.blocks, a, an, t, tn, c, cn, 0, 0, 0)


def pack_statx(m: StatInfo, mask: int = STATX_BASIC_STATS) -> bytes:
    """struct statx with the basic fields (no birth time: the pod's is not asked for).

    `mask` is what the program asked for; the reply's stx_mask says what is
    filled, which is always the basic set whatever was asked (the kernel may
    return more than requested).
    """
    del mask  # the basic set is all we have; stx_mask below tells the program so
    a, an = divmod(m.atime_ns, _NS)
    t, tn = divmod(m.mtime_ns, _NS)
    c, cn = divmod(m.ctime_ns, _NS)
    body = _STATX.pack(
        STATX_BASIC_STATS, m.blksize, 0, m.nlink, m.uid, m.gid, m.mode & 0xFFFF, 0,
        m.ino, m.size, m.blocks, 0,
        a, an, 0,  # atime
        0, 0, 0,  # btime: not filled (STATX_BTIME not in the mask)
        c, cn, 0,  # ctime
        t, tn, 0,  # mtime
        os.major(m.rdev), os.minor(m.rdev), os.major(m.dev), os.minor(m.dev),
        0,  # stx_mnt_id: not in the mask either
    )
    return body + bytes(STATX_SIZE - len(body))

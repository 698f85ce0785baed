"""The structs a remote stat writes are byte-for-byte what this kernel writes."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from agent_image.protocol import StatInfo
from syscalls.fsstruct import STAT_SIZE, STATX_BASIC_STATS, STATX_SIZE, pack_stat, pack_statx

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
SYS_STAT = 4
SYS_STATX = 332
AT_FDCWD = -100


def _info(path: Path) -> StatInfo:
    return StatInfo.from_stat(os.lstat(path))


def _kernel_stat(path: Path) -> bytes:
    buf = ctypes.create_string_buffer(STAT_SIZE)
    assert _libc.syscall(SYS_STAT, str(path).encode(), buf) == 0
    return buf.raw


def _kernel_statx(path: Path) -> bytes:
    buf = ctypes.create_string_buffer(STATX_SIZE)
    rc = _libc.syscall(SYS_STATX, AT_FDCWD, str(path).encode(), 0, STATX_BASIC_STATS, buf)
    assert rc == 0
    return buf.raw


def test_stat_layout_matches_the_kernel(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x" * 12345)
    os.utime(f, ns=(1_600_000_000_123_456_789, 1_700_000_000_987_654_321))
    assert pack_stat(_info(f)) == _kernel_stat(f)


def test_stat_of_a_directory_matches_the_kernel(tmp_path: Path) -> None:
    assert pack_stat(_info(tmp_path)) == _kernel_stat(tmp_path)


def test_statx_basic_fields_match_the_kernel(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"y" * 4097)
    os.chmod(f, 0o640)
    os.utime(f, ns=(1_600_000_000_000_000_001, 1_700_000_000_000_000_002))
    ours = pack_statx(_info(f))
    theirs = bytearray(_kernel_statx(f))
    # The kernel also fills fields outside the basic set (birth time, mount id,
    # attributes, DIO alignment); ours leaves them zero and says so in stx_mask.
    mask = int.from_bytes(theirs[0:4], "little")
    assert mask & STATX_BASIC_STATS == STATX_BASIC_STATS
    theirs[0:4] = STATX_BASIC_STATS.to_bytes(4, "little")
    theirs[8:16] = bytes(8)  # stx_attributes
    theirs[56:64] = bytes(8)  # stx_attributes_mask
    theirs[80:96] = bytes(16)  # stx_btime
    theirs[144:] = bytes(STATX_SIZE - 144)  # stx_mnt_id and later
    assert ours == bytes(theirs)

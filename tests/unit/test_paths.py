"""Path resolution as the kernel does it, lexically."""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from syscalls import paths


@given(st.lists(st.sampled_from(["a", "bb", ".", "..", "", "c.d", "..."]), max_size=8))
def test_normalise_agrees_with_posixpath(parts: list[str]) -> None:
    path = "/" + "/".join(parts)
    expected = posixpath.normpath(path)
    if expected.startswith("//"):
        expected = expected[1:]  # POSIX keeps a leading "//"; Linux does not care
    assert paths.normalise(path.encode()) == expected.encode()


def test_normalise_keeps_normal_paths_as_they_are() -> None:
    path = b"/usr/lib/python3.11/json/__init__.py"
    assert paths.normalise(path) is path
    assert paths.normalise(b"/") == b"/"
    assert paths.normalise(b"/data/") == b"/data"


def test_fd_arguments_are_32_bit_signed() -> None:
    assert paths.fd_arg((1 << 64) - 100) == paths.AT_FDCWD
    assert paths.fd_arg(0xFFFF_FFFF_FFFF_FF9C) == -100
    assert paths.fd_arg(7) == 7
    assert paths.fd_arg(0xDEAD_0000_0000_0003) == 3


def test_the_base_of_a_relative_path_is_the_threads_cwd_or_its_dirfd(tmp_path: Path) -> None:
    assert paths.base_of(os.getpid(), paths.AT_FDCWD) == os.getcwd().encode()
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert paths.base_of(os.getpid(), fd) == str(tmp_path).encode()
        assert paths.join(paths.base_of(os.getpid(), fd) or b"", b"x/../y") == \
            str(tmp_path / "y").encode()
    finally:
        os.close(fd)
    r, w = os.pipe()
    try:
        assert paths.base_of(os.getpid(), r) is None  # a pipe is no directory
    finally:
        os.close(r)
        os.close(w)
    assert paths.base_of(os.getpid(), 999_999) is None  # EBADF is the kernel's to say


def test_removed_working_directory_is_not_resolved(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    fd = os.open(gone, os.O_RDONLY | os.O_DIRECTORY)
    try:
        gone.rmdir()
        assert paths.base_of(os.getpid(), fd) is None
    finally:
        os.close(fd)


def test_cache_paths_map_back_to_the_pod() -> None:
    root = b"/tmp/mirrortrace-files-1-x/root"
    assert paths.pod_path(root, root) == b"/"
    assert paths.pod_path(root, root + b"/data/x") == b"/data/x"
    assert paths.pod_path(root, root + b"x/data") is None
    assert paths.pod_path(root, b"/data") is None

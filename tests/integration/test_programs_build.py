"""The test client programs build, are static where they must be, and work in the pod.

Run untraced inside the pod netns, each client must resolve the short service name and fetch
from the web service; run untraced on a local temp tree, the file modes of goclient and
muslfiles must print what the files hold. That proves the programs themselves are right, so
when the same call fails under mirrortrace the supervisor is to blame, not the client.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cluster import (
    DNS_IP,
    POD_HOSTNAME,
    POD_IP,
    WEB_FQDN,
    WEB_IP,
    WEB_IP6,
    Cluster,
    expected_bytes_sha256,
)
from programs import Programs, is_static

pytestmark = pytest.mark.integration

HELLO = "hello from web\n"
URL = "http://web:8080/hello"


@pytest.mark.parametrize(
    ("name", "toolchain"),
    [
        ("goclient", "go"),
        ("muslclient", "musl-gcc"),
        ("muslfiles", "musl-gcc"),
        ("busybox", "busybox"),
    ],
)
def test_static_programs_are_static(programs: Programs, name: str, toolchain: str) -> None:
    if not shutil.which(toolchain) and name not in programs.errors:
        pytest.fail(f"{name} built without {toolchain}?")
    path = programs.require(name)
    static, said = is_static(path)
    assert static, said


def test_every_available_toolchain_built(programs: Programs) -> None:
    assert programs.failures == {}
    built = (("goclient", "go"), ("muslclient", "musl-gcc"), ("muslfiles", "musl-gcc"))
    for name, tool in (*built, ("java", "javac")):
        if shutil.which(tool):
            assert name not in programs.errors, programs.errors[name]


class TestGo:
    def test_get(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([programs.goclient, "get", URL])
        assert (res.returncode, res.stdout) == (0, HELLO), res.stderr

    def test_get_sha(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([programs.goclient, "get", "-sha", "http://web:8080/bytes/300001"])
        assert res.stdout.split() == ["300001", expected_bytes_sha256(300001)], res.stderr

    def test_lookup(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([programs.goclient, "lookup", "web"])
        assert res.stdout.split() == [WEB_IP, WEB_IP6], res.stderr

    def test_lookup_unknown(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([programs.goclient, "lookup", "nope"])
        assert res.returncode == 1
        assert "no such host" in res.stderr

    def test_srv(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([programs.goclient, "srv", "http", "tcp", WEB_FQDN])
        assert res.stdout == f"{WEB_FQDN}. 8080 0 0\n", res.stderr

    def test_hostname(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([programs.goclient, "hostname"])
        assert res.stdout.split() == [POD_HOSTNAME, POD_IP], res.stderr

    def test_dial_refused_and_whoami(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([programs.goclient, "dial", f"{WEB_IP}:9"])
        assert res.returncode == 1
        assert "connection refused" in res.stderr
        ok = cluster.pod_run([programs.goclient, "dial", f"{WEB_IP}:8080"])
        assert ok.stdout == f"connected {WEB_IP}:8080\n", ok.stderr
        who = cluster.pod_run([programs.goclient, "get", "http://web:8080/whoami"])
        assert who.stdout.strip() in (WEB_IP, WEB_IP6)

    def test_stress(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([programs.goclient, "stress", "8", URL, "5"])
        assert (res.returncode, res.stdout) == (0, "ok 40\n"), res.stderr

    def test_fails_on_the_laptop(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.laptop_run([programs.goclient, "get", URL])
        assert res.returncode == 1
        assert "hello" not in res.stdout


class TestMusl:
    def test_get(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([programs.muslclient, "web", "8080", "/hello"])
        assert (res.returncode, res.stdout) == (0, HELLO), res.stderr

    def test_refused(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([programs.muslclient, "web", "9", "/"])
        assert (res.returncode, res.stderr) == (1, "connect: Connection refused\n")

    def test_unknown_name(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([programs.muslclient, "nope", "80", "/"], timeout=30)
        assert res.returncode == 1
        assert res.stderr.startswith("getaddrinfo: "), res.stderr

    def test_fails_on_the_laptop(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.laptop_run([programs.muslclient, WEB_IP, "8080", "/hello"])
        assert (res.returncode, res.stderr) == (1, "connect: Network unreachable\n")


# --------------------------------------------------------------- file modes, on local files

# More than one 64 KiB read, every byte value, NULs and all: a short or text-mode read shows.
BLOB = bytes(range(256)) * 300


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """abc (3 bytes, 0644), blob (BLOB, 0600), link -> abc, sub/ (0755)."""
    (tmp_path / "abc").write_bytes(b"abc")
    (tmp_path / "abc").chmod(0o644)
    (tmp_path / "blob").write_bytes(BLOB)
    (tmp_path / "blob").chmod(0o600)
    (tmp_path / "link").symlink_to("abc")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub").chmod(0o755)
    return tmp_path


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def _len_sha(data: bytes) -> str:
    return f"{len(data)} {hashlib.sha256(data).hexdigest()}\n"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("name", ["goclient", "muslfiles"])
def test_stat_and_lstat_print_size_perm_and_kind(programs: Programs, tree: Path, name: str) -> None:
    prog = programs.require(name)
    sub_size = (tree / "sub").stat().st_size  # 4096 on ext4, other values on tmpfs
    expected = {
        ("stat", "abc"): "3 644 file\n",
        ("stat", "blob"): f"{len(BLOB)} 600 file\n",
        ("stat", "link"): "3 644 file\n",  # followed
        ("stat", "sub"): f"{sub_size} 755 dir\n",
        ("lstat", "link"): "3 777 link\n",  # a symlink's size is its target's length
        ("lstat", "abc"): "3 644 file\n",
    }
    for (mode, path), want in expected.items():
        res = _run([prog, mode, str(tree / path)])
        assert (res.returncode, res.stdout, res.stderr) == (0, want, ""), (mode, path)
    res = _run([prog, "stat", "/dev/null"])
    assert res.stdout == "0 666 other\n", res.stderr


class TestGoFiles:
    def test_read_prints_len_and_sha256(self, programs: Programs, tree: Path) -> None:
        res = _run([programs.goclient, "read", str(tree / "abc")])
        assert (res.returncode, res.stdout) == (0, _len_sha(b"abc")), res.stderr
        res = _run([programs.goclient, "read", str(tree / "blob")])
        assert (res.returncode, res.stdout) == (0, _len_sha(BLOB)), res.stderr

    def test_read_missing_file_gives_exit_1_and_one_line(
        self, programs: Programs, tree: Path
    ) -> None:
        path = tree / "missing"
        res = _run([programs.goclient, "read", str(path)])
        assert (res.returncode, res.stdout) == (1, "")
        assert res.stderr == f"error: open {path}: no such file or directory\n"

    def test_stat_missing_file_gives_exit_1_and_one_line(
        self, programs: Programs, tree: Path
    ) -> None:
        path = tree / "missing"
        for mode in ("stat", "lstat"):
            res = _run([programs.goclient, mode, str(path)])
            assert (res.returncode, res.stdout) == (1, "")
            assert res.stderr == f"error: {mode} {path}: no such file or directory\n"

    def test_ls_lists_sorted_entries_with_kinds(self, programs: Programs, tree: Path) -> None:
        res = _run([programs.goclient, "ls", str(tree)])
        assert (res.returncode, res.stdout) == (0, "abc f\nblob f\nlink l\nsub d\n"), res.stderr
        empty = _run([programs.goclient, "ls", str(tree / "sub")])
        assert (empty.returncode, empty.stdout) == (0, ""), empty.stderr

    def test_ls_of_a_file_gives_exit_1(self, programs: Programs, tree: Path) -> None:
        res = _run([programs.goclient, "ls", str(tree / "abc")])
        assert res.returncode == 1
        # Go opens the file and only getdents64 fails ("readdirent PATH: not a directory").
        assert res.stderr.startswith("error: "), res.stderr
        assert res.stderr.endswith(f"{tree / 'abc'}: not a directory\n"), res.stderr
        assert res.stderr.count("\n") == 1, res.stderr

    def test_write_creates_and_truncates_the_file(self, programs: Programs, tree: Path) -> None:
        new = tree / "new"
        res = _run([programs.goclient, "write", str(new), "hello there"])
        assert (res.returncode, res.stdout, res.stderr) == (0, "", "")
        assert new.read_bytes() == b"hello there"
        assert new.stat().st_mode & 0o777 == 0o644 & ~_umask()
        res = _run([programs.goclient, "write", str(new), "hi"])
        assert (res.returncode, new.read_bytes()) == (0, b"hi"), res.stderr

    def test_write_into_missing_dir_gives_exit_1(self, programs: Programs, tree: Path) -> None:
        path = tree / "nodir" / "x"
        res = _run([programs.goclient, "write", str(path), "x"])
        assert res.returncode == 1
        assert res.stderr == f"error: open {path}: no such file or directory\n"

    def test_readlink_prints_the_target(self, programs: Programs, tree: Path) -> None:
        res = _run([programs.goclient, "readlink", str(tree / "link")])
        assert (res.returncode, res.stdout) == (0, "abc\n"), res.stderr

    def test_readlink_of_a_regular_file_gives_einval(self, programs: Programs, tree: Path) -> None:
        path = tree / "abc"
        res = _run([programs.goclient, "readlink", str(path)])
        assert (res.returncode, res.stderr) == (1, f"error: readlink {path}: invalid argument\n")


class TestMuslFiles:
    def test_cat_copies_the_bytes_exactly(self, programs: Programs, tree: Path) -> None:
        for name, data in (("abc", b"abc"), ("blob", BLOB)):
            res = subprocess.run(
                [programs.muslfiles, "cat", str(tree / name)], capture_output=True, timeout=30
            )
            assert (res.returncode, res.stdout, res.stderr) == (0, data, b""), name

    def test_cat_missing_file_gives_fopen_error(self, programs: Programs, tree: Path) -> None:
        res = _run([programs.muslfiles, "cat", str(tree / "missing")])
        assert (res.returncode, res.stdout) == (1, "")
        assert res.stderr == "fopen: No such file or directory\n"

    def test_cat_of_a_directory_gives_fread_error(self, programs: Programs, tree: Path) -> None:
        # open(2) of a directory read-only succeeds; read(2) then fails with EISDIR.
        res = _run([programs.muslfiles, "cat", str(tree / "sub")])
        assert (res.returncode, res.stderr) == (1, "fread: Is a directory\n")

    def test_stat_missing_file_gives_one_line(self, programs: Programs, tree: Path) -> None:
        for mode in ("stat", "lstat"):
            res = _run([programs.muslfiles, mode, str(tree / "missing")])
            assert (res.returncode, res.stdout) == (1, "")
            assert res.stderr == f"{mode}: No such file or directory\n"

    def test_ls_lists_sorted_names(self, programs: Programs, tree: Path) -> None:
        res = _run([programs.muslfiles, "ls", str(tree)])
        assert (res.returncode, res.stdout) == (0, "abc\nblob\nlink\nsub\n"), res.stderr
        empty = _run([programs.muslfiles, "ls", str(tree / "sub")])
        assert (empty.returncode, empty.stdout) == (0, ""), empty.stderr

    def test_ls_missing_dir_gives_opendir_error(self, programs: Programs, tree: Path) -> None:
        res = _run([programs.muslfiles, "ls", str(tree / "missing")])
        assert (res.returncode, res.stderr) == (1, "opendir: No such file or directory\n")

    def test_write_creates_and_truncates_the_file(self, programs: Programs, tree: Path) -> None:
        new = tree / "new"
        res = _run([programs.muslfiles, "write", str(new), "hello there"])
        assert (res.returncode, res.stdout, res.stderr) == (0, "", "")
        assert new.read_bytes() == b"hello there"
        res = _run([programs.muslfiles, "write", str(new), "hi"])
        assert (res.returncode, new.read_bytes()) == (0, b"hi"), res.stderr

    def test_write_into_missing_dir_gives_fopen_error(self, programs: Programs, tree: Path) -> None:
        res = _run([programs.muslfiles, "write", str(tree / "nodir" / "x"), "x"])
        assert (res.returncode, res.stderr) == (1, "fopen: No such file or directory\n")

    def test_bad_usage_exits_2(self, programs: Programs) -> None:
        res = _run([programs.muslfiles, "cat"])
        assert res.returncode == 2
        assert res.stderr.startswith("usage: ")


class TestJava:
    def test_get(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([*programs.java, URL])
        assert (res.returncode, res.stdout) == (0, HELLO), res.stderr

    def test_lookup(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([*programs.java, "lookup", "web"])
        assert WEB_IP in res.stdout.split(), res.stderr

    def test_jndi(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([*programs.java, "jndi", WEB_FQDN])
        assert res.stdout.split() == [WEB_IP], res.stderr

    def test_refused(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([*programs.java, "http://web:9/"])
        assert res.returncode == 1
        assert "Connection refused" in res.stderr


class TestNode:
    def test_get(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([*programs.node, "get", URL])
        assert (res.returncode, res.stdout) == (0, HELLO), res.stderr

    def test_resolve_with_c_ares(self, cluster: Cluster, programs: Programs) -> None:
        # c-ares' resolve4 applies no search list: it needs the full name.
        res = cluster.pod_run([*programs.node, "resolve", WEB_FQDN])
        assert res.stdout.split() == [WEB_IP], res.stderr
        res6 = cluster.pod_run([*programs.node, "resolve6", WEB_FQDN])
        assert res6.stdout.split() == [WEB_IP6], res6.stderr

    def test_lookup_with_getaddrinfo(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([*programs.node, "lookup", "web"])
        assert sorted(res.stdout.split()) == sorted([WEB_IP, WEB_IP6]), res.stderr

    def test_refused(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([*programs.node, "get", f"http://{WEB_IP}:9/"])
        assert res.returncode == 1
        assert "ECONNREFUSED" in res.stderr


class TestBusyboxAndPython:
    def test_busybox_wget(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([programs.busybox, "wget", "-qO-", URL])
        assert (res.returncode, res.stdout) == (0, HELLO), res.stderr

    def test_busybox_nslookup(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([programs.busybox, "nslookup", WEB_FQDN])
        assert res.returncode == 0, res.stdout
        assert DNS_IP in res.stdout
        assert WEB_IP in res.stdout

    def test_python_urllib(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([*programs.python_get, URL])
        assert (res.returncode, res.stdout) == (0, HELLO), res.stderr

    def test_dnsq(self, cluster: Cluster, programs: Programs) -> None:
        res = cluster.pod_run([*programs.dnsq, WEB_FQDN, "A"])
        assert '"rcode": "NOERROR"' in res.stdout
        assert WEB_IP in res.stdout


def test_programs_are_usable_by_nobody(cluster: Cluster, programs: Programs) -> None:
    """Unprivileged runs trace these same files, so other users must be able to run them."""
    setpriv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    res = cluster.pod_run([*setpriv, programs.goclient, "get", URL], cwd="/")
    assert res.stdout == HELLO, res.stderr
    res = cluster.pod_run([*setpriv, *programs.java, URL], cwd="/", env={"HOME": "/"})
    assert res.stdout == HELLO, res.stderr

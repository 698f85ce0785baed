"""The pod's files, read and written by real programs on the simulated cluster.

The pod's file system is a directory tree that exists only there: a process
chroot'ed into it as uid 1000 plays the target container's main process, and
the agent serves files as that process sees them (--target-pid: its root and
its credentials). Nothing in the tree exists on this machine except what the
tests put there on purpose, to check that local files win.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import Cluster
from programs import Programs

pytestmark = pytest.mark.integration

APP_UID = 1000
CONFIG = b"database: postgres://orders-db:5432/orders\nfeature: fast-checkout\n"
NESTED = b"deep inside\n"
TOKEN = b"eyJhbGciOiJSUzI1NiJ9.pod-token"
BIG_SIZE = 20 * 1024 * 1024


class PodTree:
    """The target's root: paths in the pod, and the agent command that serves them."""

    def __init__(self, root: Path, agent_exec: str, pid: int) -> None:
        self.root = root
        self.agent_exec = agent_exec
        self.pid = pid
        self.big_sha = ""

    def __truediv__(self, rel: str) -> Path:
        return self.root / rel.lstrip("/")


@pytest.fixture(scope="module")
def pod(cluster: Cluster, programs: Programs) -> Iterator[PodTree]:
    root = cluster.tmp / "pod-root"
    if root.exists():
        shutil.rmtree(root)
    (root / "bin").mkdir(parents=True)
    shutil.copy(programs.busybox, root / "bin/busybox")
    etc = root / "etc"
    (etc / "app").mkdir(parents=True)
    for name in ("resolv.conf", "hosts"):  # the session's DNS stays the pod's
        shutil.copy(cluster.pod_etc / name, etc / name)
    (etc / "app/config.yaml").write_bytes(CONFIG)
    (etc / "os-release").write_text("NAME=pod-distro\n")  # exists here too: local wins
    (etc / "ssl/certs").mkdir(parents=True)
    (etc / "ssl/certs/pod-ca.pem").write_text("-----BEGIN CERTIFICATE-----\npod\n")
    secrets = root / "var/run/secrets/kubernetes.io/serviceaccount"
    secrets.mkdir(parents=True)
    (secrets / "token").write_bytes(TOKEN)
    data = root / "data"
    (data / "nested/a/b").mkdir(parents=True)
    (data / "nested/a/b/c.txt").write_bytes(NESTED)
    big = os.urandom(BIG_SIZE)
    (data / "big.bin").write_bytes(big)
    (data / "config-link").symlink_to("../etc/app/config.yaml")
    (data / "secret.key").write_bytes(b"root only\n")
    (data / "secret.key").chmod(0o600)  # root's: the app (uid 1000) cannot read it
    (data / "log").write_bytes(b"line 1\n")
    (data / "tool").write_text("#!/bin/busybox sh\necho ran from the pod\n")
    (data / "tool").chmod(0o755)
    for path in [data, *data.rglob("*")]:
        if path.name != "secret.key":
            os.lchown(path, APP_UID, APP_UID)
    target = subprocess.Popen(["chroot", f"--userspec={APP_UID}:{APP_UID}", str(root),
                               "/bin/busybox", "sleep", "3600"])
    deadline = time.monotonic() + 10
    while os.readlink(f"/proc/{target.pid}/root") != str(root):
        assert time.monotonic() < deadline, "the target did not chroot"
        time.sleep(0.01)
    tree = PodTree(root, cluster.agent_exec + " " + shlex.join(["--target-pid",
                                                                 str(target.pid)]), target.pid)
    tree.big_sha = hashlib.sha256(big).hexdigest()
    yield tree
    target.kill()
    target.wait()


def run(cluster: Cluster, pod: PodTree, argv: list[str], *mt: str,
        **kw: object) -> subprocess.CompletedProcess[str]:
    return cluster.run(argv, agent_exec=pod.agent_exec, mt_args=list(mt), **kw)  # type: ignore


def sh(cluster: Cluster, pod: PodTree, script: str, *mt: str) -> subprocess.CompletedProcess[str]:
    return run(cluster, pod, ["sh", "-c", script], *mt)


# --- reading, with every kind of program -----------------------------------------------


def test_cat_and_sha256sum_read_pod_files_byte_exact(cluster: Cluster, pod: PodTree) -> None:
    out = sh(cluster, pod, "cat /etc/app/config.yaml && sha256sum /data/big.bin "
             "&& cat /data/nested/a/b/c.txt /data/config-link")
    assert out.returncode == 0, out.stderr
    assert out.stdout == (CONFIG.decode() + f"{pod.big_sha}  /data/big.bin\n"
                          + NESTED.decode() + CONFIG.decode())


def test_python_reads_and_lists_the_pods_files(cluster: Cluster, pod: PodTree) -> None:
    script = ("import hashlib, os, json; d = open('/data/big.bin', 'rb').read(); "
              "print(json.dumps([len(d), hashlib.sha256(d).hexdigest(), "
              "sorted(os.listdir('/data')), os.path.isdir('/data/nested'), "
              "os.path.exists('/data/none'), os.stat('/data/big.bin').st_size, "
              "os.readlink('/data/config-link'), "
              "[sorted(f) for _, _, f in os.walk('/data/nested')]]))")
    out = run(cluster, pod, [cluster.python, "-c", script])
    assert out.returncode == 0, out.stderr
    size, sha, names, isdir, exists, st_size, link, walked = json.loads(out.stdout)
    assert (size, sha, st_size) == (BIG_SIZE, pod.big_sha, BIG_SIZE)
    assert names == ["big.bin", "config-link", "log", "nested", "secret.key", "tool"]
    assert (isdir, exists, link) == (True, False, "../etc/app/config.yaml")
    assert walked == [[], [], ["c.txt"]]


def test_every_thread_sees_the_pods_metadata_for_a_pod_fd(cluster: Cluster,
                                                         pod: PodTree) -> None:
    """The filter that traps fstat is added to the whole process (TSYNC) the moment one
    thread gets a pod path, so threads started before that see it too."""
    script = ("import os, threading, queue; q = queue.Queue(); fds = queue.Queue(); "
              "t = threading.Thread(target=lambda: q.put(os.fstat(fds.get()).st_uid)); "
              "t.start(); fd = os.open('/data/log', os.O_RDONLY); fds.put(fd); t.join(); "
              "print(q.get(), os.fstat(fd).st_uid)")
    out = run(cluster, pod, [cluster.python, "-c", script])
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(APP_UID), str(APP_UID)]


def test_a_static_go_program_reads_lists_and_stats_the_pods_files(
        cluster: Cluster, pod: PodTree, programs: Programs) -> None:
    go = programs.goclient
    out = sh(cluster, pod, f"{go} read /data/big.bin; {go} ls /data; "
             f"{go} stat /data/big.bin; {go} lstat /data/config-link; "
             f"{go} readlink /data/config-link; {go} read /data/config-link; "
             f"{go} fstat /data/big.bin")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        f"{BIG_SIZE} {pod.big_sha}",
        "big.bin f", "config-link l", "log f", "nested d", "secret.key f", "tool f",
        f"{BIG_SIZE} 644 file",
        "22 777 link",
        "../etc/app/config.yaml",
        f"{len(CONFIG)} {hashlib.sha256(CONFIG).hexdigest()}",
        f"{BIG_SIZE} 644 {APP_UID}",  # raw fstat of the copy: the pod's owner, not ours
    ]


def test_static_busybox_and_musl_read_the_pods_files(cluster: Cluster, pod: PodTree,
                                                     programs: Programs) -> None:
    bb, musl = programs.busybox, programs.muslfiles
    out = sh(cluster, pod, f"{bb} cat /etc/app/config.yaml; {musl} cat /data/nested/a/b/c.txt; "
             f"{musl} ls /data/nested/a; {musl} stat /data/log; {bb} find /data/nested")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        *CONFIG.decode().splitlines(), NESTED.decode().strip(), "b", "7 644 file",
        "/data/nested", "/data/nested/a", "/data/nested/a/b", "/data/nested/a/b/c.txt",
    ]


def test_ls_l_and_stat_show_the_pods_entries_and_metadata(cluster: Cluster,
                                                         pod: PodTree) -> None:
    out = sh(cluster, pod, "ls -ln /data && stat -c '%s %a %u %F' /data/big.bin /data "
             "/data/secret.key && find /data -type l")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    listing = {line.split()[-1] if "->" not in line else line.split()[-3]: line.split()
               for line in lines[1:7]}
    assert sorted(listing) == ["big.bin", "config-link", "log", "nested", "secret.key", "tool"]
    assert listing["big.bin"][:5] == ["-rw-r--r--", "1", "1000", "1000", str(BIG_SIZE)]
    assert listing["secret.key"][0] == "-rw-------" and listing["secret.key"][2] == "0"
    assert listing["config-link"][-1] == "../etc/app/config.yaml"
    assert lines[7:] == [f"{BIG_SIZE} 644 1000 regular file", "4096 755 1000 directory"
                         if lines[8].startswith("4096") else lines[8],
                         "10 600 0 regular file", "/data/config-link"]


def test_a_directory_entered_is_the_pods(cluster: Cluster, pod: PodTree) -> None:
    out = sh(cluster, pod, "cd /data/nested && pwd && /bin/pwd && ls && cat a/b/c.txt "
             "&& cd a && ls -d ../../nested && cat ../../../etc/app/config.yaml")
    assert out.returncode == 0, out.stderr
    assert out.stdout == ("/data/nested\n/data/nested\na\n" + NESTED.decode()
                          + "../../nested\n" + CONFIG.decode())


def test_pod_errors_arrive_as_they_are(cluster: Cluster, pod: PodTree) -> None:
    out = sh(cluster, pod, "cat /data/none; cat /data/secret.key; cat /data/log/x; cat /data")
    assert out.returncode != 0
    errors = [line for line in out.stderr.splitlines() if line.startswith("cat:")]
    assert errors == ["cat: /data/none: No such file or directory",
                      "cat: /data/secret.key: Permission denied",
                      "cat: /data/log/x: Not a directory",
                      "cat: /data: Is a directory"]


def test_local_files_win_and_secrets_and_certificates_are_the_pods(
        cluster: Cluster, pod: PodTree) -> None:
    out = sh(cluster, pod, "cat /etc/os-release /var/run/secrets/kubernetes.io/serviceaccount/"
             "token; echo; ls /etc/ssl/certs; head -c 4 /etc/passwd")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] != "NAME=pod-distro"  # this machine's /etc/os-release
    assert Path("/etc/os-release").read_text().startswith(lines[0])
    assert TOKEN.decode() in out.stdout
    assert "pod-ca.pem" in lines and len([x for x in lines if x.endswith(".pem")]) == 1
    assert lines[-1] == Path("/etc/passwd").read_text()[:4]


def test_patterns_decide_and_events_say_which_rule(cluster: Cluster, pod: PodTree,
                                                   tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    out = sh(cluster, pod, "cat /etc/os-release /etc/app/config.yaml",
             "--fs-remote", "/etc/os-release", "--events", str(events))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("NAME=pod-distro\n")
    opened = {e["target"]: e for e in map(json.loads, events.read_text().splitlines())
              if e["kind"] == "open"}
    assert opened["/etc/os-release"]["detail"]["rule"] == "--fs-remote /etc/os-release"
    assert opened["/etc/app/config.yaml"]["detail"]["rule"] == "the pod's: not on this machine"
    assert opened["/etc/app/config.yaml"]["via"] == "pod"
    assert opened["/etc/app/config.yaml"]["result"] == "0"
    out = sh(cluster, pod, "cat /etc/app/config.yaml", "--fs-local", "/etc/app/**")
    assert out.returncode == 1 and "No such file" in out.stderr


def test_fs_local_leaves_every_file_alone(cluster: Cluster, pod: PodTree) -> None:
    out = sh(cluster, pod, "cat /etc/app/config.yaml", "--fs", "local")
    assert out.returncode == 1 and "No such file or directory" in out.stderr


def test_running_a_pod_binary_is_refused_with_an_event(cluster: Cluster, pod: PodTree) -> None:
    out = sh(cluster, pod, "/data/tool", "--ui", "json")
    assert out.returncode == 126, out.stderr
    assert "ran from the pod" not in out.stdout
    refused = [json.loads(line) for line in out.stderr.splitlines()
               if '"refused"' in line]
    assert refused and refused[0]["target"] == "/data/tool"
    assert refused[0]["result"] == "-EACCES"


# --- writing ---------------------------------------------------------------------------


def test_write_mode_sends_appends_new_files_and_renames_to_the_pod(
        cluster: Cluster, pod: PodTree, programs: Programs) -> None:
    before = (pod / "data/log").read_bytes()
    script = ("import os; open('/data/new.txt', 'w').write('made here\\n'); "
              "f = open('/data/tmp.json', 'w'); f.write('{\"v\": 2}'); f.close(); "
              "os.replace('/data/tmp.json', '/data/final.json'); os.mkdir('/data/made')")
    made = ["new.txt", "final.json", "go.txt", "made", "tmp.json"]
    try:
        out = sh(cluster, pod, f"echo appended >> /data/log && {cluster.python} -c "
                 f"{shlex.quote(script)} && {programs.goclient} write /data/go.txt from-go",
                 "--fs", "write")
        assert out.returncode == 0, out.stderr
        assert (pod / "data/log").read_bytes() == before + b"appended\n"
        assert (pod / "data/new.txt").read_bytes() == b"made here\n"
        assert (pod / "data/final.json").read_bytes() == b'{"v": 2}'
        assert not (pod / "data/tmp.json").exists()
        assert (pod / "data/made").is_dir()
        assert (pod / "data/go.txt").read_bytes() == b"from-go"
        # Made as the target: its uid, its umask-shaped modes.
        assert (pod / "data/new.txt").stat().st_uid == APP_UID
        assert (pod / "data/made").stat().st_uid == APP_UID
    finally:
        for name in made:
            path = pod / f"data/{name}"
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        (pod / "data/log").write_bytes(before)


def test_write_mode_unlink_and_truncate_reach_the_pod_and_refusals_stay(
        cluster: Cluster, pod: PodTree) -> None:
    (pod / "data/doomed").write_text("x")
    os.chown(pod / "data/doomed", APP_UID, APP_UID)
    try:
        out = sh(cluster, pod, "rm /data/doomed && truncate -s 3 /data/log && "
                 "cat /data/log; echo x > /data/secret.key", "--fs", "write")
        assert out.returncode != 0  # the last command: the app may not write root's file
        assert out.stdout == "lin"
        assert "cannot create /data/secret.key: Permission denied" in out.stderr
        assert not (pod / "data/doomed").exists()
        assert (pod / "data/log").read_bytes() == b"lin"
        assert (pod / "data/secret.key").read_bytes() == b"root only\n"
    finally:
        (pod / "data/log").write_bytes(b"line 1\n")


def test_read_mode_refuses_writes_with_erofs_and_the_pod_is_unchanged(
        cluster: Cluster, pod: PodTree) -> None:
    script = ("echo x >> /data/log; echo y > /data/new; rm /data/log; mv /data/log /data/l2; "
              "mkdir /data/d; mv /tmp/../etc/os-release /data/x 2>&1 | grep -c 'cross-device'")
    out = sh(cluster, pod, script, "--fs", "read")
    errors = out.stderr.splitlines()
    assert sum("Read-only file system" in line for line in errors) == 5, out.stderr
    assert (pod / "data/log").read_bytes() == b"line 1\n"
    assert not (pod / "data/new").exists() and not (pod / "data/d").exists()


def test_nothing_of_the_pod_is_left_on_disk(cluster: Cluster, pod: PodTree,
                                            tmp_path: Path) -> None:
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    out = run(cluster, pod, ["cat", "/etc/app/config.yaml"], env={"TMPDIR": str(tmpdir)})
    assert out.returncode == 0 and out.stdout == CONFIG.decode()
    assert list(tmpdir.iterdir()) == []


def test_a_mirrord_json_and_the_equivalent_toml_decide_alike(cluster: Cluster, pod: PodTree,
                                                            tmp_path: Path) -> None:
    """Teams moving from mirrord keep their file: its fs mode and patterns apply."""
    mirrord = tmp_path / "mirrord.json"
    mirrord.write_text(json.dumps({"feature": {"fs": {
        "mode": "read", "read_only": ["^/etc/os-release$"], "local": ["^/etc/app/"]}}}))
    toml = tmp_path / "mirrortrace.toml"
    toml.write_text('[fs]\nmode = "read"\nremote = ["re:^/etc/os-release$"]\n'
                    'local = ["/etc/app/**"]\n')
    script = "cat /etc/os-release; cat /etc/app/config.yaml; echo x >> /data/log"
    outs = [sh(cluster, pod, script, "-f", str(path)) for path in (mirrord, toml)]
    for out in outs:
        assert out.stdout == "NAME=pod-distro\n", out.stderr
        assert "/etc/app/config.yaml: No such file or directory" in out.stderr
        assert "/data/log: Read-only file system" in out.stderr
    assert (pod / "data/log").read_bytes() == b"line 1\n"


def test_an_unprivileged_user_reads_the_pods_files(cluster: Cluster, pod: PodTree,
                                                   unpriv_python: str) -> None:
    """No root anywhere: the supervisor and an agent serving the tree as its root both run
    as nobody, so the pod's permissions are the agent's own."""
    agent = shlex.join([unpriv_python, "-I", "-m", "agent_image", "--root", str(pod.root)])
    script = ("import hashlib, os; f = open('/data/big.bin', 'rb'); "
              "print(hashlib.sha256(f.read()).hexdigest(), os.fstat(f.fileno()).st_uid, "
              "sorted(os.listdir('/data'))[:2]); open('/data/secret.key')")
    out = cluster.run(["/usr/bin/python3", "-c", script], user="nobody", agent_exec=agent)
    assert out.returncode == 1
    sha, uid, names = out.stdout.split(" ", 2)
    assert (sha, int(uid)) == (pod.big_sha, APP_UID)  # fstat shows the pod's owner
    assert names.strip() == "['big.bin', 'config-link']"
    assert "PermissionError" in out.stderr

"""The file policy: every default rule, patterns winning, and the rule it names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.fs_policy import (
    RULE_EXISTS,
    RULE_INSIDE,
    RULE_MISSING,
    RULE_SECRETS,
    FsPolicy,
    glob_regex,
)


@pytest.fixture
def policy(tmp_path: Path) -> FsPolicy:
    (tmp_path / "work").mkdir()
    (tmp_path / "home").mkdir()
    return FsPolicy("read", cwd=str(tmp_path / "work"), home=str(tmp_path / "home"),
                    program="/opt/orders/bin/orders")


@pytest.mark.parametrize("path", [
    "/proc/self/status", "/sys/fs/cgroup/cpu.max", "/dev/null", "/tmp/x", "/usr/lib/python3",
    "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2", "/bin/sh", "/sbin/ip",
    "/etc/ld.so.cache", "/etc/ld.so.preload", "/opt/vendor/libfoo.so", "/srv/x/libbar.so.1.2",
    "/opt/orders/lib/runtime.jar", "/opt/orders/bin/orders", "/usr", "/tmp",
])
def test_system_paths_and_the_programs_own_files_are_local(policy: FsPolicy, path: str) -> None:
    remote, rule = policy.decide(path.encode())
    assert not remote, rule
    assert rule.startswith("this machine's")


def test_the_current_directory_and_home_are_local_and_named(policy: FsPolicy,
                                                            tmp_path: Path) -> None:
    remote, rule = policy.decide(str(tmp_path / "work/missing.txt").encode())
    assert not remote and rule == "this machine's: the current directory"
    remote, rule = policy.decide(str(tmp_path / "home/.config/none").encode())
    assert not remote and rule == "this machine's: $HOME"


@pytest.mark.parametrize("path", [
    "/var/run/secrets/kubernetes.io/serviceaccount/token", "/run/secrets/db-password",
    "/etc/ssl/certs/ca-certificates.crt", "/etc/ssl/certs",
])
def test_secrets_and_the_ca_bundle_are_the_pods_even_when_they_exist_here(
        policy: FsPolicy, path: str) -> None:
    assert policy.decide(path.encode()) == (True, RULE_SECRETS)


def test_anything_else_is_local_when_it_exists_here_else_the_pods(policy: FsPolicy) -> None:
    assert policy.decide(b"/etc/passwd") == (False, RULE_EXISTS)
    assert policy.decide(b"/etc/app-not-here/config.yaml") == (True, RULE_MISSING)
    assert policy.decide(b"/etc/passwd/below-a-file") == (True, RULE_MISSING)
    # Lookalikes of the always-local prefixes are not local by name.
    assert policy.decide(b"/library-not-here/x")[1] == RULE_MISSING
    assert policy.decide(b"/usrdata-not-here")[1] == RULE_MISSING


def test_a_path_reached_through_a_pod_directory_is_the_pods(policy: FsPolicy) -> None:
    assert policy.decide(b"/etc/passwd", in_pod=True) == (True, RULE_INSIDE)
    assert not policy.decide(b"/usr/bin/env", in_pod=True)[0]  # rules still apply


def test_patterns_win_over_every_default_and_local_wins_over_remote(tmp_path: Path) -> None:
    policy = FsPolicy("read", remote=["/usr/share/app/**", "/etc/passwd", "re:\\.pem$"],
                      local=["/run/secrets/local-*", "re:^/etc/app/dev\\."])
    assert policy.decide(b"/usr/share/app/x/y") == (True, "--fs-remote /usr/share/app/**")
    assert policy.decide(b"/usr/share/app") == (True, "--fs-remote /usr/share/app/**")
    assert policy.decide(b"/etc/passwd") == (True, "--fs-remote /etc/passwd")
    assert policy.decide(b"/usr/lib/ssl/cert.pem") == (True, "--fs-remote re:\\.pem$")
    assert policy.decide(b"/run/secrets/local-token") == (False,
                                                          "--fs-local /run/secrets/local-*")
    assert policy.decide(b"/run/secrets/other") == (True, RULE_SECRETS)
    assert policy.decide(b"/etc/app/dev.yaml")[1] == "--fs-local re:^/etc/app/dev\\."


def test_root_as_the_current_directory_does_not_make_everything_local() -> None:
    policy = FsPolicy("read", cwd="/", home="/")
    assert policy.decide(b"/etc/app-not-here/x") == (True, RULE_MISSING)


@pytest.mark.parametrize(("pattern", "yes", "no"), [
    ("/etc/app/**", ["/etc/app", "/etc/app/a", "/etc/app/a/b"], ["/etc/apps", "/etc"]),
    ("/etc/*.yaml", ["/etc/a.yaml", "/etc/a.yaml/inside"], ["/etc/x/a.yaml", "/etc/a.yml"]),
    ("/etc/**/*.yaml", ["/etc/a.yaml", "/etc/x/y/a.yaml"], ["/etcx/a.yaml"]),
    ("/data", ["/data", "/data/x"], ["/database"]),
    ("/d?ta/[ab]*", ["/data/a1", "/dota/b"], ["/data/c", "/dta/a"]),
    ("/x/[!a]", ["/x/b"], ["/x/a"]),
    ("/**", ["/", "/anything/at/all"], []),
])
def test_globs(pattern: str, yes: list[str], no: list[str]) -> None:
    rx = re.compile(glob_regex(pattern))
    for path in yes:
        assert rx.search(path), (pattern, path)
    for path in no:
        assert not rx.search(path), (pattern, path)


_name = st.text(alphabet="abcz.-_+ ()$^", min_size=1, max_size=8).filter(
    lambda s: s not in (".", ".."))


@given(st.lists(_name, min_size=1, max_size=4), st.lists(_name, max_size=3))
def test_a_plain_path_pattern_matches_itself_and_everything_below(
        parts: list[str], below: list[str]) -> None:
    base = "/" + "/".join(parts)
    rx = re.compile(glob_regex(base))
    assert rx.search(base)
    assert rx.search("/".join([base, *below]))
    assert not rx.search(base + "x")


def test_the_quick_local_check_skips_only_what_is_surely_local(tmp_path: Path) -> None:
    policy = FsPolicy("read", cwd=str(tmp_path), home="/home/dev", program="/opt/x/bin/x")
    quick = policy.quick_local(b"/tmp/mirrortrace-files-1-abc/root")
    assert quick is not None
    for path in (b"/usr/lib/x.py", b"/proc/self/maps", b"/home/dev/.cache/x", b"/tmp/a",
                 b"/opt/x/lib/y", str(tmp_path / "src/m.py").encode(), b"/lib64"):
        assert quick.match(path), path
    for path in (b"/usr/./lib/x", b"/usr//lib", b"/usr/lib/../../etc/app",
                 b"/tmp/mirrortrace-files-1-abc/root", b"/tmp/mirrortrace-files-1-abc/root/d",
                 b"/etc/passwd", b"/var/run/secrets/t", b"usr/lib/x", b"/library"):
        assert not quick.match(path), path
    assert FsPolicy("read", remote=["/usr/**"]).quick_local(b"/tmp/c") is None


_paths = st.lists(st.sampled_from(["usr", "lib", "tmp", "etc", "proc", "..", ".", "", "a.so",
                                   "home", "dev", "x", "run", "secrets"]), max_size=6)


@given(_paths)
def test_whatever_the_quick_check_passes_the_policy_calls_local(parts: list[str]) -> None:
    policy = FsPolicy("read", cwd="/work/app", home="/home/dev", program="/opt/x/bin/x")
    quick = policy.quick_local(b"/tmp/cache/root")
    assert quick is not None
    path = ("/" + "/".join(parts)).encode()
    if quick.match(path):
        assert policy.decide(path) [0] is False, path

"""COMMAND's environment: remote, local, merge, exclude."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from supervisor.environment import (
    KEEP_LOCAL,
    describe_env,
    encode_environ,
    parse_environ,
    resolve_env,
)

LOCAL = {"PATH": "/home/me/bin:/usr/bin", "HOME": "/home/me", "TERM": "xterm",
         "SSH_AUTH_SOCK": "/tmp/agent", "LC_ALL": "C", "EDITOR": "vim", "DATABASE_URL": "local"}
POD = {"PATH": "/usr/local/bin:/usr/bin", "HOME": "/root", "DATABASE_URL": "postgres://db",
       "KUBERNETES_SERVICE_HOST": "10.96.0.1", "FEATURE_X": "on", "LANG": "C.UTF-8"}

names = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ_", min_size=1, max_size=8)
envs = st.dictionaries(names | st.sampled_from(["PATH", "HOME", "LC_ALL", "SSH_X"]),
                       st.text(max_size=8), max_size=10)


def test_merge_takes_the_service_config_and_keeps_the_session_local() -> None:
    env, from_pod = resolve_env("merge", LOCAL, POD)
    assert env["DATABASE_URL"] == "postgres://db"
    assert env["KUBERNETES_SERVICE_HOST"] == "10.96.0.1"
    assert env["PATH"] == LOCAL["PATH"] and env["HOME"] == "/home/me"
    assert env["SSH_AUTH_SOCK"] == "/tmp/agent" and env["LC_ALL"] == "C"
    assert env["EDITOR"] == "vim"  # only local: kept
    assert "LANG" not in env  # the session's language is this machine's, even unset
    assert from_pod == {"DATABASE_URL", "KUBERNETES_SERVICE_HOST", "FEATURE_X"}


def test_remote_is_the_pods_alone_except_what_is_excluded() -> None:
    env, from_pod = resolve_env("remote", LOCAL, POD, ["FEATURE_*", "EDITOR"])
    assert env == {"PATH": "/usr/local/bin:/usr/bin", "HOME": "/root",
                   "DATABASE_URL": "postgres://db", "KUBERNETES_SERVICE_HOST": "10.96.0.1",
                   "LANG": "C.UTF-8", "EDITOR": "vim"}
    assert "EDITOR" not in from_pod and "FEATURE_X" not in from_pod


def test_local_or_no_pod_environment_changes_nothing() -> None:
    assert resolve_env("local", LOCAL, POD) == (LOCAL, set())
    assert resolve_env("merge", LOCAL, None) == (LOCAL, set())


@given(envs, envs, st.lists(st.sampled_from(["A*", "B", "PATH", "X*"]), max_size=3))
def test_merge_rules_hold_for_any_environments(local: dict, pod: dict, exclude: list) -> None:
    env, from_pod = resolve_env("merge", local, pod, exclude)
    import fnmatch

    def kept(name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, g) for g in (*KEEP_LOCAL, *exclude))

    for name in set(local) | set(pod):
        if kept(name) or name not in pod:
            assert env.get(name) == local.get(name), name
        else:
            assert env[name] == pod[name] and name in from_pod, name


@given(st.dictionaries(st.text(min_size=1).filter(lambda s: "=" not in s and "\0" not in s),
                       st.text().filter(lambda s: "\0" not in s)))
def test_environ_bytes_round_trip(env: dict) -> None:
    assert parse_environ(encode_environ(env)) == env


def test_environ_entries_without_a_name_or_equals_sign_are_not_variables() -> None:
    assert parse_environ(b"A=1\0junk\0=x\0B=a=b\0\0") == {"A": "1", "B": "a=b"}


def test_the_description_names_but_never_shows() -> None:
    env, from_pod = resolve_env("merge", LOCAL, POD)
    line = describe_env(env, from_pod, True)
    assert "DATABASE_URL" in line and "postgres" not in line and "/home/me" not in line
    assert describe_env(LOCAL, set(), False) == "environment: this machine's"


def test_include_limits_what_comes_from_the_pod() -> None:
    env, from_pod = resolve_env("merge", LOCAL, POD, include=["DATABASE_*"])
    assert env["DATABASE_URL"] == "postgres://db" and from_pod == {"DATABASE_URL"}
    assert "KUBERNETES_SERVICE_HOST" not in env and "FEATURE_X" not in env
    env, from_pod = resolve_env("remote", LOCAL, POD, include=["DATABASE_*"])
    assert from_pod == {"DATABASE_URL"} and env["EDITOR"] == "vim"  # the rest stays local


def test_override_wins_over_everything() -> None:
    for mode in ("local", "merge", "remote"):
        env, from_pod = resolve_env(mode, LOCAL, POD, override={"DATABASE_URL": "sqlite://"})
        assert env["DATABASE_URL"] == "sqlite://" and "DATABASE_URL" not in from_pod

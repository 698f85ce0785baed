"""The command line: one clear line and exit 2 for every mistake, before anything starts."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cli_run import invoke, one_error_line
from hypothesis import given
from hypothesis import strategies as st

from supervisor import options
from supervisor.errors import (
    AgentLostError,
    AgentStartError,
    ConfigError,
    MirrortraceError,
    UsageError,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_ambient_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Run from an empty folder so no .mirrortrace.toml of the machine is found,
    # with no agent command in the environment.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MIRRORTRACE_AGENT_EXEC", raising=False)


@pytest.fixture
def runner_calls(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Stand in for supervisor.runner and the agent: record the options, return 7."""
    calls: list[Any] = []
    module = type(sys)("supervisor.runner")

    def run(opts: Any, link: Any = None) -> int:
        assert link.proc == ["spawned", opts.agent_argv]  # started before the engine loads
        calls.append(opts)
        return 7

    module.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "supervisor.runner", module)
    import supervisor.transport

    monkeypatch.setattr(supervisor.transport, "spawn_agent", lambda argv: ["spawned", argv])
    monkeypatch.setattr(supervisor.transport, "PipeLink",
                        lambda proc: type("Link", (), {"proc": proc})())
    return calls


def test_bad_option_is_one_line_and_exit_2() -> None:
    line = one_error_line(invoke("run", "--bogus", "--", "true"))
    assert line == "mirrortrace: no such option: --bogus (see mirrortrace run --help)"


def test_bad_option_without_context_names_the_subcommand() -> None:
    line = one_error_line(invoke("run", "--ui"))
    assert "'--ui' requires an argument" in line
    assert "(see mirrortrace run --help)" in line


def test_unknown_command() -> None:
    line = one_error_line(invoke("fly"))
    assert "no such command 'fly'" in line


def test_missing_command() -> None:
    line = one_error_line(invoke("run"))
    assert "missing COMMAND" in line


def test_bad_local_cidr() -> None:
    line = one_error_line(invoke("run", "--local-cidr", "10.0.0.300/8", "--", "true"))
    assert "--local-cidr" in line and "10.0.0.300/8" in line


def test_local_cidr_with_host_bits_suggests_the_network() -> None:
    line = one_error_line(invoke("run", "--local-cidr", "10.1.2.3/8", "--", "true"))
    assert "did you mean 10.0.0.0/8?" in line


@pytest.mark.parametrize("value", ["80", "80:", "a:b", "0:80", "80:70000", "1:2:3"])
def test_bad_port_map(value: str) -> None:
    line = one_error_line(invoke("run", "--port-map", value, "--", "true"))
    assert "--port-map" in line


def test_bad_enum_value() -> None:
    line = one_error_line(invoke("run", "--fs", "readwrite", "--", "true"))
    assert "--fs must be one of local, read, write, not 'readwrite'" in line


def test_bad_path_filter_regex() -> None:
    line = one_error_line(
        invoke("run", "--incoming", "steal", "--http-path-filter", "[", "--", "true")
    )
    assert "regular expression" in line


def test_header_filter_needs_name_and_regex() -> None:
    line = one_error_line(
        invoke("run", "--incoming", "steal", "--http-header-filter", "no colon", "--", "true")
    )
    assert "'Name: regex'" in line


def test_filter_with_incoming_off_is_refused() -> None:
    line = one_error_line(invoke("run", "--http-path-filter", "^/api", "--", "true"))
    assert "--incoming is off" in line


def test_a_target_without_any_kubeconfig_says_so_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env["HOME"] = str(tmp_path)  # no ~/.kube/config, and no service account: not in a pod
    result = subprocess.run(
        [sys.executable, "-m", "supervisor.cli", "run", "-t", "deployment/web", "-n", "dev",
         "--", "touch", str(marker)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no Kubernetes configuration" in lines[0], result.stderr
    assert "give --kubeconfig FILE" in lines[0]
    assert not marker.exists()


def test_bad_target_is_reported_first() -> None:
    line = one_error_line(invoke("run", "--target", "web", "--", "true"))
    assert "'web' is not a target" in line


def test_agent_exec_and_target_together() -> None:
    line = one_error_line(invoke("run", "--agent-exec", "x", "-t", "pod/a", "--", "true"))
    assert "not both" in line


def test_unbalanced_quotes_in_agent_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIRRORTRACE_AGENT_EXEC", "ssh 'host")
    line = one_error_line(invoke("run", "--", "true"))
    assert "MIRRORTRACE_AGENT_EXEC" in line


def test_command_not_found_is_one_line_and_127_like_a_shell() -> None:
    result = invoke("run", "--agent-exec", "x", "--", "no-such-program-xyz")
    assert result.exit_code == 127
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no-such-program-xyz: command not found" in lines[0]


def test_events_folder_must_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "events.jsonl"
    line = one_error_line(invoke("run", "--events", str(missing), "--", "true"))
    assert "does not exist" in line


def test_run_passes_options_to_the_runner(runner_calls: list[Any], tmp_path: Path) -> None:
    result = invoke(
        "run",
        "--agent-exec",
        "ip netns exec pod1 mirrortrace-agent",
        "--no-dns",
        "--outgoing",
        "local",
        "--local-cidr",
        "10.0.0.0/8",
        "--local-cidr",
        "fd00::/8",
        "--fs",
        "write",
        "--fs-remote",
        "/etc/app/**",
        "--env",
        "remote",
        "--env-exclude",
        "AWS_*",
        "--incoming",
        "steal",
        "--http-header-filter",
        "x-user: alice",
        "--http-path-filter",
        "^/api",
        "--port-map",
        "8080:80",
        "--ui",
        "json",
        "--events",
        str(tmp_path / "ev.jsonl"),
        "--",
        "echo",
        "-n",
        "hi",
    )
    assert result.exit_code == 7, result.output
    (opts,) = runner_calls
    assert isinstance(opts, options.RunOptions)
    assert opts.command == ["echo", "-n", "hi"]
    assert opts.agent_source == "agent-exec"
    assert opts.agent_argv == ["ip", "netns", "exec", "pod1", "mirrortrace-agent"]
    assert opts.dns is False
    assert opts.outgoing == "local"
    assert opts.local_cidrs == [
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("fd00::/8"),
    ]
    assert (opts.fs, opts.fs_remote, opts.fs_local) == ("write", ["/etc/app/**"], [])
    assert (opts.env, opts.env_exclude) == ("remote", ["AWS_*"])
    assert opts.incoming == "steal"
    assert opts.http_header_filter == "x-user: alice"
    assert opts.http_path_filter == "^/api"
    assert opts.port_map == [(8080, 80)]
    assert opts.ui == "json"
    assert opts.events_file == tmp_path / "ev.jsonl"
    assert opts.target is None


def test_command_options_after_the_program_belong_to_it(runner_calls: list[Any]) -> None:
    # No "--": everything from the first word on is COMMAND's.
    result = invoke("run", "--agent-exec", "x", "echo", "--fs", "-t")
    assert result.exit_code == 7, result.output
    assert runner_calls[0].command == ["echo", "--fs", "-t"]


def test_defaults_and_local_agent_notice(runner_calls: list[Any]) -> None:
    result = invoke("run", "--", "true")
    assert result.exit_code == 7, result.output
    (opts,) = runner_calls
    assert opts.agent_source == "local"
    assert (opts.dns, opts.outgoing, opts.fs, opts.env, opts.incoming) == (
        True,
        "remote",
        "read",
        "merge",
        "off",
    )
    assert opts.ui == "none"  # stderr is not a terminal here
    assert "using a local agent" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_local_agent_notice_is_json_with_ui_json(runner_calls: list[Any]) -> None:
    import json

    result = invoke("run", "--ui", "json", "--", "true")
    notice = json.loads(result.stderr.strip())
    assert notice["kind"] == "notice"
    assert "using a local agent" in notice["message"]


def test_runner_errors_are_one_line(runner_calls: list[Any], monkeypatch: pytest.MonkeyPatch
                                    ) -> None:
    def run(opts: Any, agent: Any = None) -> int:
        raise AgentStartError("agent exited with status 127 before the handshake")

    monkeypatch.setattr(sys.modules["supervisor.runner"], "run", run)
    line = one_error_line(invoke("run", "--agent-exec", "nope", "--", "true"))
    assert line.startswith("mirrortrace: agent exited with status 127 before the handshake; ")


def test_an_agent_command_that_cannot_start_is_one_line() -> None:
    line = one_error_line(invoke("run", "--agent-exec", "/nonexistent/agent", "--", "true"))
    assert line == (
        "mirrortrace: cannot start the agent command '/nonexistent/agent': No such file or "
        "directory; check --agent-exec (or MIRRORTRACE_AGENT_EXEC)"
    )


def test_config_check_ok(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text('agent-exec = "x"\n[fs]\nmode = "write"\n')
    result = invoke("config", "check", str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == f"{path}: ok"
    assert "  fs = write" in result.stdout


def test_config_check_bad(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text('agent-exec = "x"\n\n[fs]\nmode = "rw"\n')
    line = one_error_line(invoke("config", "check", str(path)))
    assert line.startswith(f"mirrortrace: {path}:4: 'fs.mode' must be one of")


def test_config_check_missing_file(tmp_path: Path) -> None:
    line = one_error_line(invoke("config", "check", str(tmp_path / "none.toml")))
    assert "does not exist" in line


def test_run_with_bad_config_file_stops_before_starting(
    tmp_path: Path, runner_calls: list[Any]
) -> None:
    path = tmp_path / "m.toml"
    path.write_text("dns = 1\n")
    line = one_error_line(invoke("run", "-f", str(path), "--", "true"))
    assert f"{path}:1:" in line
    assert runner_calls == []


MIRRORD_JSON = """{
  "agent": {"ttl": 30},
  "feature": {
    "fs": {"mode": "write", "read_only": ["^/etc/app/"]},
    "env": {"include": "DB_*", "load_from_process": true},
    "network": {"outgoing": {"filter": {"local": ["10.0.0.0/8"]}}}
  }
}
"""


def test_run_with_a_mirrord_json_prints_each_ignored_key(
    tmp_path: Path, runner_calls: list[Any]
) -> None:
    path = tmp_path / "mirrord.json"
    path.write_text(MIRRORD_JSON)
    result = invoke("run", "-f", str(path), "--agent-exec", "x", "--", "true")
    assert result.exit_code == 7, result.output
    (opts,) = runner_calls
    assert (opts.fs, opts.fs_remote, opts.env_include) == ("write", ["re:^/etc/app/"], ["DB_*"])
    assert opts.local_cidrs == [ipaddress.ip_network("10.0.0.0/8")]
    assert result.stderr.splitlines() == [
        "mirrortrace: mirrord.json: ignoring agent (mirrortrace starts its own agent: "
        "set agent-exec or target instead)",
        "mirrortrace: mirrord.json: ignoring feature.env.load_from_process "
        "(mirrortrace has no equivalent)",
    ]


def test_discovered_mirrord_json_is_used_by_run(tmp_path: Path, runner_calls: list[Any]) -> None:
    (tmp_path / ".mirrord").mkdir()
    (tmp_path / ".mirrord" / "mirrord.json").write_text('{"feature": {"env": false}}')
    result = invoke("run", "--agent-exec", "x", "--", "true")
    assert result.exit_code == 7, result.output
    assert runner_calls[0].env == "local"
    assert result.stderr == ""


def test_bad_mirrord_json_is_one_line_with_line_and_column(
    tmp_path: Path, runner_calls: list[Any]
) -> None:
    path = tmp_path / "mirrord.json"
    path.write_text('{\n  "feature": {\n    "fs": "read"\n    "env": true\n  }\n}\n')
    line = one_error_line(invoke("run", "-f", str(path), "--", "true"))
    assert line.startswith(f"mirrortrace: {path}:4: not valid JSON: Expecting ',' delimiter")
    assert "(column 5)" in line
    assert runner_calls == []


def test_mirrord_json_with_a_wrong_type_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "mirrord.json"
    path.write_text('{\n  "feature": {\n    "network": {"dns": 1}\n  }\n}\n')
    line = one_error_line(invoke("config", "check", str(path)))
    assert line.startswith(f"mirrortrace: {path}:3: 'feature.network.dns' must be true, false")


def test_config_check_mirrord_json(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text(MIRRORD_JSON)
    result = invoke("config", "check", str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"{path}: ok",
        "  fs = write",
        "  fs-remote = re:^/etc/app/",
        "  env-include = DB_*",
        "  local-cidr = 10.0.0.0/8",
    ]
    assert [w.split(" (")[0] for w in result.stderr.splitlines()] == [
        "mirrortrace: x.json: ignoring agent",
        "mirrortrace: x.json: ignoring feature.env.load_from_process",
    ]


def test_fs_pattern_with_re_prefix_must_compile() -> None:
    line = one_error_line(invoke("run", "--fs-remote", "re:(", "--", "true"))
    assert line.startswith("mirrortrace: --fs-remote: '(' is not a valid regular expression")


def test_help_is_plain_text() -> None:
    result = invoke("run", "--help")
    assert result.exit_code == 0
    assert "Usage: mirrortrace run [OPTIONS] [--] COMMAND [ARGS]..." in result.stdout
    for option in ("--agent-exec", "--local-cidr", "--http-header-filter", "--events"):
        assert option in result.stdout
    assert "╭" not in result.stdout


def test_syscalls_without_table_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "syscalls.table", None)  # import fails
    result = invoke("syscalls")
    # Either the real table prints, or the error is one clear line.
    if result.exit_code != 0:
        assert "syscall table" in one_error_line(result)


def test_syscalls_prints_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    class Entry:
        def __init__(self, support: str, note: str) -> None:
            self.support, self.note = support, note

    module = type(sys)("syscalls.table")
    module.TABLE = {  # type: ignore[attr-defined]
        "openat": Entry("full", ""),
        "connect": Entry("partial", "AF_INET/AF_INET6 only"),
    }
    monkeypatch.setitem(sys.modules, "syscalls.table", module)
    result = invoke("syscalls")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        "connect  partial   AF_INET/AF_INET6 only",
        "openat   full",
    ]


def test_errors_render_as_one_line_with_hint() -> None:
    assert str(UsageError("bad", "do this")) == "bad; do this"
    assert str(MirrortraceError("plain")) == "plain"
    assert str(MirrortraceError("multi\nline", "hint\nhere")) == "multi line; hint here"
    err = ConfigError("unknown key 'x'", path=Path("/a/m.toml"), line=3)
    assert str(err).startswith("/a/m.toml:3: unknown key 'x'; ")
    assert (err.path, err.line, err.reason) == (Path("/a/m.toml"), 3, "unknown key 'x'")
    assert AgentLostError("agent died").hint  # every user-facing error has a hint


@given(st.integers(1, 65535), st.integers(1, 65535))
def test_port_map_round_trip(local: int, remote: int) -> None:
    assert options.parse_port_map(f"{local}:{remote}") == (local, remote)


@given(st.text(max_size=20))
def test_port_map_rejects_garbage_with_usage_error(text: str) -> None:
    try:
        local, remote = options.parse_port_map(text)
    except UsageError as err:
        assert "--port-map" in str(err)
    else:
        assert 1 <= local <= 65535 and 1 <= remote <= 65535


@given(st.ip_addresses())
def test_bare_address_is_a_host_network(address: Any) -> None:
    network = options.parse_cidr(str(address))
    assert network.num_addresses == 1


def test_module_runs_with_python_dash_m() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "supervisor.cli", "run", "--bogus"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr == "mirrortrace: no such option: --bogus (see mirrortrace run --help)\n"


def test_run_imports_nothing_heavy() -> None:
    # `mirrortrace run` must start fast: no rich, kubernetes, psutil, or the
    # pydantic that typer's value coercion would pull in.
    code = """
import sys, types
fake = types.ModuleType("supervisor.runner")
def run(opts, link=None):
    link.proc.kill()
    link.proc.wait()
    heavy = ("rich", "kubernetes", "psutil", "pydantic", "ptrace")
    print(sorted(m for m in heavy if m in sys.modules))
    return 0
fake.run = run
sys.modules["supervisor.runner"] = fake
from supervisor.cli import main
main(["run", "--agent-exec", "sleep 5", "--local-cidr", "10.0.0.0/8", "--", "true"])
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stderr

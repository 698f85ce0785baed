"""Config files: discovery, every kind of mistake, and the command line winning."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor import config
from supervisor.errors import ConfigError
from supervisor.options import from_command_line

EXAMPLE = Path(__file__).resolve().parents[2] / "supervisor" / "mirrortrace.example.toml"


def write(folder: Path, text: str, name: str = "mirrortrace.toml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def error_for(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text, "bad.toml")
    with pytest.raises(ConfigError) as info:
        config.load_config(path)
    assert info.value.path == path
    assert "\n" not in str(info.value)
    return info.value


# Discovery


def test_config_is_found_in_a_parent_folder(tmp_path: Path) -> None:
    found = write(tmp_path, 'ui = "plain"\n')
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    assert config.find_config(deep) == found


def test_dot_file_wins_over_plain_name_in_the_same_folder(tmp_path: Path) -> None:
    write(tmp_path, "", "mirrortrace.toml")
    dotted = write(tmp_path, "", ".mirrortrace.toml")
    assert config.find_config(tmp_path) == dotted


def test_nearest_config_wins(tmp_path: Path) -> None:
    write(tmp_path, "")
    inner = tmp_path / "inner"
    inner.mkdir()
    nearest = write(inner, "", ".mirrortrace.toml")
    assert config.find_config(inner) == nearest


def test_no_config_anywhere_gives_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the tmp tree is searched when nothing above it has a config;
    # a config in / or /tmp on the test machine would make this meaningless.
    if any((p / n).exists() for p in tmp_path.parents for n in config.SEARCHED_NAMES):
        pytest.skip("a parent of the temporary folder has a mirrortrace config")
    assert config.find_config(tmp_path) is None


def test_explicit_missing_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        config.resolve_config(tmp_path / "nope.toml")


def test_explicit_config_beats_discovery(tmp_path: Path) -> None:
    write(tmp_path, "")
    other = write(tmp_path, "", "other.toml")
    assert config.resolve_config(other, tmp_path) == other


# Values


def test_top_level_and_tables_give_the_same_values(tmp_path: Path) -> None:
    flat = write(
        tmp_path,
        'agent-exec = "x"\nfs = "write"\nfs-remote = ["/etc/app/**"]\n'
        'outgoing = "local"\nlocal-cidr = ["10.0.0.0/8"]\nenv = "remote"\n'
        'env-exclude = "AWS_*"\nincoming = "steal"\nport-map = ["8080:80"]\n',
        "flat.toml",
    )
    tables = write(
        tmp_path,
        '[agent]\nexec = "x"\n[fs]\nmode = "write"\nremote = ["/etc/app/**"]\n'
        '[outgoing]\nmode = "local"\nlocal-cidr = ["10.0.0.0/8"]\n'
        '[env]\nmode = "remote"\nexclude = "AWS_*"\n'
        '[incoming]\nmode = "steal"\nport-map = ["8080:80"]\n',
        "tables.toml",
    )
    assert config.load_config(flat) == config.load_config(tables)
    values = config.load_config(tables)
    assert values["local_cidrs"] == [ipaddress.ip_network("10.0.0.0/8")]
    assert values["port_map"] == [(8080, 80)]
    assert values["env_exclude"] == ["AWS_*"]


def test_target_table_and_relative_paths(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[target]\npath = "deployment/web"\nnamespace = "dev"\nkubeconfig = "kube/config"\n'
        'events = "out/events.jsonl"\n',
    )
    with pytest.raises(ConfigError, match="unknown key 'events' in \\[target\\]"):
        config.load_config(path)
    path = write(
        tmp_path,
        'events = "out/events.jsonl"\n[target]\npath = "deployment/web"\n'
        'namespace = "dev"\nkubeconfig = "kube/config"\n',
    )
    values = config.load_config(path)
    assert values["target"] == "deployment/web"
    assert values["namespace"] == "dev"
    # Relative to the file, not to the current directory.
    assert values["kubeconfig"] == tmp_path / "kube" / "config"
    assert values["events_file"] == tmp_path / "out" / "events.jsonl"


def test_env_include_and_override_at_the_top_level_or_in_env(tmp_path: Path) -> None:
    flat = write(
        tmp_path,
        'env-include = "DB_*"\nenv-override = { LOG = "debug", "A.B" = "" }\n',
        "flat.toml",
    )
    table = write(
        tmp_path,
        '[env]\ninclude = ["DB_*"]\n[env.override]\nLOG = "debug"\n"A.B" = ""\n',
        "table.toml",
    )
    values = config.load_config(flat)
    assert values == config.load_config(table)
    assert values == {"env_include": ["DB_*"], "env_override": {"LOG": "debug", "A.B": ""}}
    assert config.describe(values) == ["env-include = DB_*", "env-override = LOG=debug, A.B="]


def test_env_override_must_be_a_table_of_strings(tmp_path: Path) -> None:
    err = error_for(tmp_path, '[env]\nmode = "merge"\noverride = { PORT = 8080 }\n')
    assert err.line == 3
    assert "'env.override' must be a table of strings, not a table" in str(err)
    err = error_for(tmp_path, 'ui = "plain"\nenv-override = { "A=B" = "x" }\n')
    assert err.line == 2
    assert "'env-override': 'A=B' is not an environment variable name" in str(err)


def test_re_patterns_in_fs_keys_must_compile(tmp_path: Path) -> None:
    path = write(tmp_path, '[fs]\nremote = ["re:^/etc/app/.*\\\\.yaml$", "/srv/**"]\n')
    assert config.load_config(path)["fs_remote"] == ["re:^/etc/app/.*\\.yaml$", "/srv/**"]
    err = error_for(tmp_path, '[fs]\nmode = "read"\nlocal = ["re:(unclosed"]\n')
    assert err.line == 3
    assert "'fs.local': '(unclosed' is not a valid regular expression" in str(err)
    err = error_for(tmp_path, 'fs-remote = ["re:"]\n')
    assert "no regular expression after re:" in str(err)


def test_agent_exec_as_a_list_is_joined_safely(tmp_path: Path) -> None:
    path = write(tmp_path, 'agent-exec = ["ssh", "host", "my agent"]\n')
    assert config.load_config(path)["agent_exec"] == "ssh host 'my agent'"


def test_example_config_loads_and_checks() -> None:
    loaded = config.check_config(EXAMPLE)
    assert loaded.values["agent_exec"]
    assert loaded.warnings == []
    assert config.describe(loaded.values)


# Mistakes: each names the file, the key and the line


def test_bad_toml_reports_tomllib_line(tmp_path: Path) -> None:
    err = error_for(tmp_path, 'ui = "plain"\n\nfs = = "read"\n')
    assert err.line == 3
    assert "not valid TOML" in str(err)
    assert str(err).startswith(f"{tmp_path / 'bad.toml'}:3: ")


def test_unterminated_toml_at_end_of_file_gets_a_line(tmp_path: Path) -> None:
    err = error_for(tmp_path, 'ui = "plain"\nfs =')
    assert err.line == 2


def test_unknown_top_level_key(tmp_path: Path) -> None:
    err = error_for(tmp_path, 'ui = "plain"\n\nnamepsace = "dev"\n')
    assert err.line == 3
    assert "'namepsace'" in str(err)
    assert "did you mean 'namespace'" in str(err)


def test_unknown_table(tmp_path: Path) -> None:
    err = error_for(tmp_path, 'ui = "plain"\n[files]\nmode = "read"\n')
    assert err.line == 2
    assert "'files'" in str(err)


def test_unknown_key_in_table(tmp_path: Path) -> None:
    err = error_for(tmp_path, '[fs]\nmode = "read"\n\n[incoming]\nmode = "steal"\nport = 80\n')
    assert err.line == 6
    assert "unknown key 'port' in [incoming]" in str(err)


def test_wrong_type(tmp_path: Path) -> None:
    err = error_for(tmp_path, 'fs = "read"\ndns = "yes"\n')
    assert err.line == 2
    assert "'dns' must be true or false" in str(err)


def test_wrong_type_in_table_names_the_dotted_key(tmp_path: Path) -> None:
    err = error_for(tmp_path, '[fs]\nmode = "read"\nremote = 3\n')
    assert err.line == 3
    assert "'fs.remote' must be a string or a list of strings" in str(err)


def test_bad_enum_value(tmp_path: Path) -> None:
    err = error_for(tmp_path, '[outgoing]\nmode = "everywhere"\n')
    assert err.line == 2
    assert "'outgoing.mode' must be one of remote, local" in str(err)


def test_bad_value_for_dotted_key(tmp_path: Path) -> None:
    err = error_for(tmp_path, 'ui = "plain"\nincoming.port-map = ["80"]\n')
    assert err.line == 2
    assert "'incoming.port-map'" in str(err)
    assert "LOCAL:REMOTE" in str(err)


def test_bad_value_in_inline_table(tmp_path: Path) -> None:
    err = error_for(tmp_path, '\nfs = { mode = "read", remote = [1] }\n')
    assert err.line == 2


def test_bad_cidr_and_regex(tmp_path: Path) -> None:
    err = error_for(tmp_path, 'local-cidr = ["10.0.0.0/8", "10.1.2.3/16"]\n')
    assert "host bits" in str(err)
    err = error_for(tmp_path, '[incoming]\nmode = "steal"\nhttp-path-filter = "(unclosed"\n')
    assert err.line == 3
    assert "regular expression" in str(err)


def test_same_setting_twice(tmp_path: Path) -> None:
    err = error_for(tmp_path, 'fs-remote = ["/a"]\n[fs]\nremote = ["/b"]\n')
    assert err.line == 3
    assert "sets the same thing" in str(err)


def test_table_name_used_as_a_value(tmp_path: Path) -> None:
    err = error_for(tmp_path, 'agent = "kubectl"\n')
    assert "'agent' must be a table" in str(err)


def test_check_config_applies_rules_between_settings(tmp_path: Path) -> None:
    path = write(tmp_path, 'http-path-filter = "^/api"\n')
    config.load_config(path)  # each key alone is fine
    with pytest.raises(ConfigError, match="--incoming is off"):
        config.check_config(path)


@given(st.text(max_size=60))
def test_any_text_gives_values_or_a_config_error(text: str) -> None:
    try:
        config.parse_config(text, Path("/x/mirrortrace.toml"))
    except ConfigError as err:
        assert "\n" not in str(err)
        assert err.line is None or err.line >= 1


# The command line overrides the file


def test_command_line_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIRRORTRACE_AGENT_EXEC", raising=False)
    path = write(
        tmp_path,
        'agent-exec = "from-file"\nui = "json"\nfs = "write"\ndns = false\n'
        'local-cidr = ["10.0.0.0/8"]\n',
    )
    opts = from_command_line(
        ["true"],
        {"ui": "plain", "dns": True, "local_cidr": ["192.168.0.0/16"]},
        path,
    )
    assert opts.ui == "plain"
    assert opts.dns is True
    assert opts.fs == "write"  # not on the command line: the file's
    assert opts.local_cidrs == [ipaddress.ip_network("192.168.0.0/16")]
    assert opts.agent_exec == "from-file"
    assert opts.agent_source == "config"
    assert opts.config_path == path


def test_discovered_config_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIRRORTRACE_AGENT_EXEC", raising=False)
    write(tmp_path, 'agent-exec = "team-agent"\n', ".mirrortrace.toml")
    sub = tmp_path / "src"
    sub.mkdir()
    monkeypatch.chdir(sub)
    opts = from_command_line(["true"], {}, None)
    assert opts.agent_exec == "team-agent"
    assert opts.agent_source == "config"


def test_agent_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, 'agent-exec = "from-file"\n')
    monkeypatch.setenv("MIRRORTRACE_AGENT_EXEC", "from-env")
    opts = from_command_line(["true"], {"agent_exec": "from-flag"}, path)
    assert (opts.agent_source, opts.agent_exec) == ("agent-exec", "from-flag")
    opts = from_command_line(["true"], {}, path)
    assert (opts.agent_source, opts.agent_exec) == ("env", "from-env")
    monkeypatch.delenv("MIRRORTRACE_AGENT_EXEC")
    opts = from_command_line(["true"], {"target": "pod/web"}, path)
    assert (opts.agent_source, opts.target, opts.agent_exec) == ("target", "pod/web", None)
    empty = write(tmp_path, "", "empty.toml")
    opts = from_command_line(["true"], {}, empty)
    assert opts.agent_source == "local"
    assert opts.agent_argv[:3] == [sys.executable, "-I", "-S"]  # as in a pod: stdlib only
    assert opts.agent_argv[-1].endswith("from agent_image.agent import main; main()")

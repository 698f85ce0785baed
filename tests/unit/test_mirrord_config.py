"""mirrord.json files: each mapped key's value, one warning per ignored key, exact errors."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor import config
from supervisor.errors import ConfigError
from supervisor.mirrord_config import parse_mirrord_config
from supervisor.options import from_command_line

FILE = Path("/repo/.mirrord/mirrord.json")


def parse(data: Any) -> tuple[dict[str, Any], list[str]]:
    return parse_mirrord_config(json.dumps(data, indent=2), FILE)


def error_for(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_mirrord_config(text, FILE)
    assert info.value.path == FILE
    assert "\n" not in str(info.value)
    return info.value


def net(**settings: Any) -> dict[str, Any]:
    return {"feature": {"network": settings}}


# Each mapped key


@pytest.mark.parametrize(
    ("data", "values"),
    [
        ({"target": "pod/web-0"}, {"target": "pod/web-0"}),
        ({"target": "deploy/web/container/app"}, {"target": "deployment/web/container/app"}),
        ({"target": "targetless"}, {"target": "targetless"}),
        (
            {"target": {"path": "statefulset/db", "namespace": "dev"}},
            {"target": "statefulset/db", "namespace": "dev"},
        ),
        (
            {"target": {"path": {"deployment": "web", "container": "app"}}},
            {"target": "deployment/web/container/app"},
        ),
        ({"target": {"path": {"pod": "web-0"}}}, {"target": "pod/web-0"}),
        ({"kube_context": "staging"}, {"context": "staging"}),
        ({"kubeconfig": "/etc/kube.conf"}, {"kubeconfig": Path("/etc/kube.conf")}),
        ({"kubeconfig": "kube/config"}, {"kubeconfig": FILE.parent / "kube" / "config"}),
        ({"feature": {"env": True}}, {"env": "merge"}),
        ({"feature": {"env": False}}, {"env": "local"}),
        (
            {"feature": {"env": {"include": "DB_*; API_KEY;", "exclude": ["AWS_*"]}}},
            {"env_include": ["DB_*", "API_KEY"], "env_exclude": ["AWS_*"]},
        ),
        ({"feature": {"env": {"override": {"X": "1"}}}}, {"env_override": {"X": "1"}}),
        ({"feature": {"fs": "write"}}, {"fs": "write"}),
        ({"feature": {"fs": "Local"}}, {"fs": "local"}),
        (
            {"feature": {"fs": {"read_only": "^/etc/app", "read_write": ["/data/.*"]}}},
            {"fs_remote": ["re:/data/.*", "re:^/etc/app"]},
        ),
        (
            {"feature": {"fs": {"mode": "read", "local": [r"\.git/"]}}},
            {"fs": "read", "fs_local": [r"re:\.git/"]},
        ),
        (net(outgoing=True), {"outgoing": "remote"}),
        (net(outgoing=False), {"outgoing": "local"}),
        (net(outgoing={"tcp": False, "udp": False}), {"outgoing": "local"}),
        (net(outgoing={"tcp": True}), {}),
        (
            net(outgoing={"filter": {"local": ["10.0.0.0/8", "192.168.1.5", "fd00::/8"]}}),
            {
                "local_cidrs": [
                    ipaddress.ip_network("10.0.0.0/8"),
                    ipaddress.ip_network("192.168.1.5/32"),
                    ipaddress.ip_network("fd00::/8"),
                ]
            },
        ),
        (net(dns=False), {"dns": False}),
        (net(dns={"enabled": True}), {"dns": True}),
        (net(incoming="off"), {"incoming": "off"}),
        (net(incoming={"mode": "steal"}), {"incoming": "steal"}),
        (net(incoming={}), {"incoming": "mirror"}),  # mirrord's default mode
        (
            net(
                incoming={
                    "mode": "steal",
                    "http_filter": {"header_filter": "^x-user: alice", "path_filter": "^/api"},
                    "port_mapping": [[8080, 80], "9000:90"],
                }
            ),
            {
                "incoming": "steal",
                "http_header_filter": "x-user: alice",
                "http_path_filter": "^/api",
                "port_map": [(8080, 80), (9000, 90)],
            },
        ),
        (
            net(incoming={"mode": "steal", "http_header_filter": {"filter": "x-a: 1"}}),
            {"incoming": "steal", "http_header_filter": "x-a: 1"},
        ),
        ({"$schema": "https://example.invalid/schema.json", "target": None}, {}),
    ],
)
def test_mapped_key_gives_its_value(data: dict[str, Any], values: dict[str, Any]) -> None:
    got, warnings = parse(data)
    assert got == values
    assert warnings == []


# Ignored keys: one warning each, in a fixed form


def test_every_ignored_key_is_named_in_one_line() -> None:
    _, warnings = parse(
        {
            "agent": {"ttl": 30},
            "operator": False,
            "skip_processes": "ide-debugger",
            "feature": {"copy_target": True, "hostname": True, "env": {"unset": ["A"]}},
        }
    )
    assert warnings == [
        "mirrord.json: ignoring agent (mirrortrace starts its own agent: "
        "set agent-exec or target instead)",
        "mirrord.json: ignoring operator (mirrortrace has no operator)",
        "mirrord.json: ignoring skip_processes "
        "(mirrortrace traces COMMAND and every process it starts)",
        "mirrord.json: ignoring feature.copy_target (mirrortrace does not copy targets)",
        "mirrord.json: ignoring feature.hostname (it has no meaning in mirrortrace)",
        "mirrord.json: ignoring feature.env.unset (use env-exclude to keep a name local instead)",
    ]


def test_localwithoverrides_is_read_with_a_warning() -> None:
    values, warnings = parse({"feature": {"fs": {"mode": "localwithoverrides"}}})
    assert values == {"fs": "read"}
    (line,) = warnings
    assert line.startswith('mirrord.json: feature.fs.mode: "localwithoverrides" is taken as "read"')
    assert "already keep local what exists locally" in line


def test_fs_not_found_and_other_fs_keys_are_warned() -> None:
    values, warnings = parse({"feature": {"fs": {"not_found": ["x"], "mapping": {}}}})
    assert values == {}
    assert [w.split(" (")[0] for w in warnings] == [
        "mirrord.json: ignoring feature.fs.not_found",
        "mirrord.json: ignoring feature.fs.mapping",
    ]


def test_outgoing_filter_entries_with_ports_names_and_protocols() -> None:
    entries = ["tcp://10.1.0.0/16:5432", "db.internal:5432", ":53", "[fd00::1]:80", "10.2.3.4/8"]
    values, warnings = parse(net(outgoing={"filter": {"local": entries}}))
    assert values["local_cidrs"] == [
        ipaddress.ip_network("10.1.0.0/16"),
        ipaddress.ip_network("fd00::1/128"),
        ipaddress.ip_network("10.0.0.0/8"),
    ]
    key = "mirrord.json: {}feature.network.outgoing.filter.local[{}]"
    assert warnings[0].startswith(key.format("", 0) + ": 'tcp://10.1.0.0/16:5432' is taken as")
    assert "ignoring the protocol and port" in warnings[0]
    assert warnings[1].startswith(key.format("ignoring ", 1) + " ('db.internal:5432' is a host")
    assert warnings[2].startswith(key.format("ignoring ", 2))
    assert warnings[3].startswith(key.format("", 3) + ": '[fd00::1]:80' is taken as fd00::1/128")
    assert "host bits" in warnings[4]
    assert len(warnings) == 5


def test_outgoing_remote_filter_and_one_protocol_off_are_warned() -> None:
    values, warnings = parse(
        net(outgoing={"udp": False, "ignore_localhost": True, "filter": {"remote": ["1.1.1.1"]}})
    )
    assert values == {}
    assert sorted(w.split(" (")[0] for w in warnings) == [
        "mirrord.json: ignoring feature.network.outgoing.filter.remote",
        "mirrord.json: ignoring feature.network.outgoing.ignore_localhost",
        "mirrord.json: ignoring feature.network.outgoing.udp",
    ]
    assert any("diverts TCP and UDP alike" in w for w in warnings)


def test_targets_mirrortrace_cannot_reach_are_warned() -> None:
    for target in ("rollout/web", {"path": {"cron_job": "nightly"}}):
        values, warnings = parse({"target": target})
        assert "target" not in values
        (line,) = warnings
        assert "mirrortrace cannot target a" in line


# Errors: the file, the dotted key and its line


def test_bad_json_gives_line_and_column() -> None:
    err = error_for('{\n  "target": "pod/web",\n  "feature": {,}\n}\n')
    assert err.line == 3
    assert str(err).startswith(f"{FILE}:3: not valid JSON: ")
    assert "(column 15)" in str(err)


def test_wrong_type_names_the_dotted_key_and_its_line() -> None:
    text = (
        '{\n  "feature": {\n    "fs": "read",\n    "network": {\n      "dns": "yes"\n    }\n  }\n}'
    )
    err = error_for(text)
    assert err.line == 5
    assert "'feature.network.dns' must be true, false or an object, not a string ('yes')" in str(
        err
    )


def test_bad_regex_names_the_pattern() -> None:
    text = '{"feature": {"fs": {\n"read_only": [\n"^/ok",\n"(unclosed"]}}}'
    err = error_for(text)
    assert err.line == 4
    assert "'feature.fs.read_only[1]'" in str(err)
    assert "not a valid regular expression" in str(err)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"target": "pod/Web"}, "not a Kubernetes name"),
        ({"target": {"path": {"container": "c"}}}, "must name one kind of target"),
        ({"feature": {"fs": "everything"}}, "'feature.fs' must be one of local, read"),
        (net(incoming="copy"), "'feature.network.incoming' must be one of off, mirror, steal"),
        (net(incoming={"port_mapping": [[80, 0]]}), "port 0"),
        (net(incoming={"port_mapping": [[80]]}), "a [local, remote] pair"),
        (net(incoming={"http_filter": {"header_filter": "no colon"}}), "not 'Name: regex'"),
        (net(outgoing={"tcp": "no"}), "'feature.network.outgoing.tcp' must be true or false"),
        ({"feature": {"env": {"override": {"A=B": "1"}}}}, "not an environment variable name"),
        ({"feature": {"env": {"override": {"A": 1}}}}, "'feature.env.override.A' must be a string"),
        ({"feature": {"env": {"include": 3}}}, "must be a string or a list of strings"),
        ({"feature": []}, "'feature' must be an object, not a list"),
        ({"kubeconfig": ""}, "'kubeconfig' is empty"),
    ],
)
def test_bad_value_for_a_mapped_key(data: dict[str, Any], words: str) -> None:
    err = error_for(json.dumps(data))
    assert words in str(err)
    assert err.line == 1


def test_a_key_set_twice_is_an_error() -> None:
    err = error_for('{\n"feature": {"fs": "read",\n "fs": "write"}}')
    assert err.line == 3
    assert "'feature.fs' is set twice" in str(err)


def test_the_file_must_hold_an_object() -> None:
    assert "must be a JSON object" in str(error_for("[1, 2]"))


# Random files


KNOWN = {
    # top-level or feature-level key -> (a value, the RunOptions field it sets)
    "target": ("deployment/web", "target"),
    "kube_context": ("ctx", "context"),
    "kubeconfig": ("/kube", "kubeconfig"),
    "feature.env": (False, "env"),
    "feature.fs": ("write", "fs"),
    "feature.network.dns": (False, "dns"),
    "feature.network.outgoing": (False, "outgoing"),
    "feature.network.incoming": ("steal", "incoming"),
}
NAMES = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz_"), min_size=1, max_size=12)


@given(
    st.sets(st.sampled_from(sorted(KNOWN))),
    st.dictionaries(NAMES, st.integers() | st.booleans() | st.none(), max_size=5),
    st.dictionaries(NAMES, st.text(max_size=5), max_size=5),
    st.dictionaries(NAMES, st.lists(st.integers(), max_size=2), max_size=5),
)
def test_unknown_keys_get_one_warning_each_and_known_keys_a_value(
    known: set[str],
    top: dict[str, Any],
    feature: dict[str, Any],
    network: dict[str, Any],
) -> None:
    top = {
        k: v for k, v in top.items() if k not in ("target", "kube_context", "kubeconfig", "feature")
    }
    feature = {k: v for k, v in feature.items() if k not in ("env", "fs", "network")}
    network = {k: v for k, v in network.items() if k not in ("dns", "outgoing", "incoming")}
    data: dict[str, Any] = {**top, "feature": {**feature, "network": dict(network)}}
    for dotted in known:
        where = data
        *parents, name = dotted.split(".")
        for parent in parents:
            where = where[parent]
        where[name] = KNOWN[dotted][0]
    values, warnings = parse(data)
    assert set(values) == {KNOWN[k][1] for k in known}
    unknown = [*top, *(f"feature.{k}" for k in feature), *(f"feature.network.{k}" for k in network)]
    ignored = [w.split(" (")[0].removeprefix("mirrord.json: ignoring ") for w in warnings]
    assert sorted(ignored) == sorted(unknown)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
PLACES = st.sampled_from(
    [
        ("target",),
        ("target", "path"),
        ("feature", "env"),
        ("feature", "env", "override"),
        ("feature", "fs"),
        ("feature", "fs", "read_only"),
        ("feature", "network", "outgoing"),
        ("feature", "network", "outgoing", "filter", "local"),
        ("feature", "network", "incoming"),
        ("feature", "network", "incoming", "port_mapping"),
    ]
)


@given(st.lists(st.tuples(PLACES, JSON), max_size=4))
def test_any_values_at_mapped_keys_give_values_or_a_config_error(
    placed: list[tuple[tuple[str, ...], Any]],
) -> None:
    data: dict[str, Any] = {}
    for place, value in placed:
        where = data
        for parent in place[:-1]:
            if not isinstance(where.get(parent), dict):
                where[parent] = {}
            where = where[parent]
        where[place[-1]] = value
    try:
        parse(data)
    except ConfigError as err:
        assert "\n" not in str(err)
        assert err.line is not None and err.line >= 1


@given(st.text(max_size=40))
def test_any_text_gives_values_or_a_config_error(text: str) -> None:
    try:
        parse_mirrord_config(text, FILE)
    except ConfigError as err:
        assert "\n" not in str(err)


# Discovery, and the same settings as the equivalent TOML


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_mirrord_json_is_found_in_a_parent_folder(tmp_path: Path) -> None:
    found = write(tmp_path / ".mirrord" / "mirrord.json", "{}")
    deep = tmp_path / "src" / "app"
    deep.mkdir(parents=True)
    assert config.find_config(deep) == found


def test_mirrortrace_file_at_the_same_level_wins(tmp_path: Path) -> None:
    write(tmp_path / ".mirrord" / "mirrord.json", "{}")
    toml = write(tmp_path / "mirrortrace.toml", "")
    assert config.find_config(tmp_path) == toml
    assert config.find_config(tmp_path / ".mirrord") == toml  # the same level, seen from inside


def test_nearer_mirrord_json_beats_a_farther_mirrortrace_file(tmp_path: Path) -> None:
    write(tmp_path / ".mirrortrace.toml", "")
    nearer = write(tmp_path / "svc" / ".mirrord" / "mirrord.json", "{}")
    assert config.find_config(tmp_path / "svc") == nearer


MIRRORD_JSON = {
    "target": {"path": "deployment/web", "namespace": "dev"},
    "kube_context": "staging",
    "feature": {
        "env": {"include": "DB_*;API_*", "exclude": ["API_SECRET"], "override": {"LOG": "debug"}},
        "fs": {
            "mode": "write",
            "read_write": ["^/data/"],
            "read_only": "^/etc/app/",
            "local": ["^/etc/app/dev/"],
        },
        "network": {
            "outgoing": {"filter": {"local": ["10.0.0.0/8", "192.168.1.5:5432"]}},
            "dns": False,
            "incoming": {"mode": "steal", "port_mapping": [[8080, 80]]},
        },
    },
}
EQUIVALENT_TOML = """\
dns = false

[target]
path = "deployment/web"
namespace = "dev"
context = "staging"

[env]
include = ["DB_*", "API_*"]
exclude = ["API_SECRET"]
override = { LOG = "debug" }

[fs]
mode = "write"
remote = ["re:^/data/", "re:^/etc/app/"]
local = ["re:^/etc/app/dev/"]

[outgoing]
local-cidr = ["10.0.0.0/8", "192.168.1.5"]

[incoming]
mode = "steal"
port-map = ["8080:80"]
"""


def test_mirrord_json_gives_the_same_options_as_the_equivalent_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MIRRORTRACE_AGENT_EXEC", raising=False)
    from_json = write(tmp_path / "mirrord.json", json.dumps(MIRRORD_JSON, indent=2))
    from_toml = write(tmp_path / "mirrortrace.toml", EQUIVALENT_TOML)
    warnings: list[str] = []
    a = from_command_line(["true"], {"ui": "none"}, from_json, warnings=warnings)
    b = from_command_line(["true"], {"ui": "none"}, from_toml)
    assert dataclasses.replace(a, config_path=None) == dataclasses.replace(b, config_path=None)
    assert a.env_include == ["DB_*", "API_*"]
    assert a.fs_remote == ["re:^/data/", "re:^/etc/app/"]
    assert warnings == [
        "mirrord.json: feature.network.outgoing.filter.local[1]: '192.168.1.5:5432' is taken as "
        "192.168.1.5/32 (ignoring the port: local-cidr keeps every port of a network local)"
    ]


def test_command_line_overrides_a_mirrord_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MIRRORTRACE_AGENT_EXEC", raising=False)
    path = write(tmp_path / "mirrord.json", json.dumps(MIRRORD_JSON))
    opts = from_command_line(["true"], {"fs": "local", "dns": True, "agent_exec": "my-agent"}, path)
    assert (opts.fs, opts.dns, opts.agent_source) == ("local", True, "agent-exec")
    assert opts.env_override == {"LOG": "debug"}  # not on the command line: the file's


def test_discovered_mirrord_json_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIRRORTRACE_AGENT_EXEC", raising=False)
    write(tmp_path / ".mirrord" / "mirrord.json", '{"feature": {"fs": "local"}, "pause": true}')
    monkeypatch.chdir(tmp_path)
    warnings: list[str] = []
    opts = from_command_line(["true"], {}, None, warnings=warnings)
    assert opts.fs == "local"
    assert opts.config_path == tmp_path / ".mirrord" / "mirrord.json"
    assert warnings == ["mirrord.json: ignoring pause (it has no meaning in mirrortrace)"]

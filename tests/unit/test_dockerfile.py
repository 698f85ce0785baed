"""The agent image: it copies what exists, runs the agent, and needs nothing but Python."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_every_copied_path_exists_in_the_repository() -> None:
    copies = [rest for word, rest in _instructions() if word in ("COPY", "ADD")]
    assert copies
    for rest in copies:
        *sources, _dest = [part for part in rest.split() if not part.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), source


def test_the_entrypoint_runs_the_agent_module_isolated_and_attached() -> None:
    found = dict(_instructions())
    entry = json.loads(found["ENTRYPOINT"])
    assert entry == ["python3", "-I", "-m", "agent_image"]
    assert json.loads(found["CMD"]) == ["--attached"]
    copied = found["COPY"].split()
    # -I drops PYTHONPATH and the cwd: the package must land in site-packages.
    assert copied[0] == "agent_image" and re.search(r"/site-packages/agent_image$", copied[1])
    python = re.search(r"python:(\d+\.\d+)", found["FROM"])
    assert python and f"python{python.group(1)}/site-packages" in copied[1]


def test_the_image_runs_as_a_user_not_root() -> None:
    users = [rest for word, rest in _instructions() if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")


def test_the_agent_runs_as_the_image_would_start_it(tmp_path: Path) -> None:
    """-I -m agent_image from a site-packages-like directory, nothing else on the path."""
    site = tmp_path / "site-packages"
    site.mkdir()
    subprocess.run(["cp", "-r", str(ROOT / "agent_image"), str(site)], check=True)
    code = ("import sys, runpy; sys.path.insert(0, sys.argv.pop(1)); "
            "sys.argv[0] = 'agent_image'; runpy.run_module('agent_image', run_name='__main__')")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(site), "--version"],
                         capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("mirrortrace-agent ")

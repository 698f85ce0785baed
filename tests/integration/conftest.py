"""Session fixtures of the integration tests: the simulated cluster and the test programs.

- ``cluster``: a :class:`cluster.Cluster` (pod + laptop network namespaces, web server,
  dnsmasq, the pod's /etc files); skipped with the reason when this machine cannot build one
  (not root, no ``ip netns``, no dnsmasq). Always torn down, also on failure or SIGTERM.
- ``programs``: a :class:`programs.Programs` with the test clients built once into a
  world-readable temp directory; a test asking for a program whose toolchain is missing is
  skipped, one whose build failed fails.
- ``unpriv_python``: path of a Python any user can run with mirrortrace installed
  (``cluster.run(..., user="nobody")`` builds and uses it on its own).
"""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster import Cluster, unavailable_reason  # noqa: E402
from programs import Programs, build_programs  # noqa: E402


def _sigterm_to_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The simulated cluster, built once per session (about a second) and always removed."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    # A CI runner or an impatient developer may send SIGTERM: turn it into the
    # KeyboardInterrupt pytest already handles, so the namespaces are still removed.
    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    try:
        with Cluster.create() as built:
            yield built
    finally:
        if previous == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.fixture(scope="session")
def programs() -> Iterator[Programs]:
    """The test client programs, built once per session into a world-readable directory."""
    out = Path(tempfile.mkdtemp(prefix="mt-programs-"))
    out.chmod(0o755)
    try:
        yield build_programs(out)
    finally:
        shutil.rmtree(out, ignore_errors=True)


@pytest.fixture(scope="session")
def unpriv_python(cluster: Cluster) -> str:
    """A world-readable interpreter with mirrortrace installed, for setpriv'd runs."""
    return cluster.unprivileged_python()


from kubeapi import KubeDouble  # noqa: E402


@pytest.fixture(scope="session")
def kube(cluster: Cluster) -> Iterator[KubeDouble]:
    """The Kubernetes API server double (kubeapi.py), listening in the laptop namespace: its
    ``kubeconfig`` is world-readable; skipped without the openssl program. Always closed
    (server, the processes it started, its files)."""
    if not shutil.which("openssl"):
        pytest.skip("the kube API double needs the openssl program (apt-get install openssl)")
    double = KubeDouble(cluster)
    try:
        yield double
    finally:
        double.close()

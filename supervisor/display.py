"""What `--ui` shows while COMMAND runs, and after: the one place the runner asks.

- ``live``: the dashboard (supervisor/dashboard.py) at the bottom of the terminal,
  redrawn four times a second from events the bus hands it, with COMMAND on a
  pseudo-terminal of its own (supervisor/terminal.py) whose output is drawn above
  the view; at the end the view gives way to the summary, which stays.
- ``plain``: the bus writes one line per event; the same summary follows at exit.
- ``json`` and ``none``: nothing here (the bus alone writes what they promise).

The order matters and lives here so the runner cannot get it wrong: the pty must
exist before COMMAND is forked (``child_setup`` runs in the child); the view and
the pumps start only once the agent answered (a failed start then prints one
line on an untouched terminal); at the end COMMAND's last output is drained
before the view stops, and the real terminal is given back on every way out.
"""

from __future__ import annotations

import shlex
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from supervisor.errors import MirrortraceError
from supervisor.events import EventBus
from supervisor.options import RunOptions

if TYPE_CHECKING:
    from supervisor.dashboard import LiveView
    from supervisor.dashboard_state import DashState
    from supervisor.session import Session
    from supervisor.terminal import AppTerminal

AGENT_WATCH_EVERY = 2.0  # seconds between round-trip probes of the agent
SWITCH_INTERVAL = 0.0005  # seconds a thread may hold the GIL while another waits


def describe_source(options: RunOptions) -> str:
    """The header's first words: where the agent is."""
    if options.agent_source == "target" and options.target:
        where = [options.target]
        if options.namespace:
            where.append(f"-n {options.namespace}")
        if options.context:
            where.append(f"--context {options.context}")
        return " ".join(where)
    if options.agent_source == "local":
        return "local agent (no cluster)"
    return "agent: " + shlex.join(options.agent_argv)


def describe_modes(options: RunOptions) -> dict[str, str]:
    return {
        "dns": "on" if options.dns else "off",
        "outgoing": options.outgoing,
        "fs": options.fs,
        "env": options.env,
        "incoming": options.incoming,
    }


class Display:
    """The dashboard's pieces for one run (see the module docstring for the order)."""

    def __init__(self, options: RunOptions, bus: EventBus) -> None:
        self.ui = options.ui
        self.bus = bus
        self.state: DashState | None = None
        self.terminal: AppTerminal | None = None
        self.view: LiveView | None = None
        self._stop_watch: Callable[[], None] | None = None
        self._switch_interval = sys.getswitchinterval()
        self._finished = False
        if self.ui not in ("live", "plain"):
            return  # and rich is never imported: a tenth of a second of start-up
        from supervisor.dashboard import LiveView
        from supervisor.dashboard_state import DashState, SessionInfo

        self.state = DashState(SessionInfo(describe_source(options), describe_modes(options)))
        bus.subscribe(self.state.add)
        if self.ui == "live":
            from rich.console import Console

            from supervisor.terminal import AppTerminal

            try:
                self.terminal = AppTerminal.open()
            except MirrortraceError as exc:
                # No pty here (a container without /dev/pts): COMMAND's output would tear
                # through the view, so show what plain shows, and say why.
                self.ui = bus.fmt = "plain"
                bus.notice(f"mirrortrace: {exc.message}; showing plain lines instead of the "
                           "live view")
                return
            self.view = LiveView(self.state, Console(file=sys.stderr))
            bus.take_notices(self.view.notice)

    @property
    def child_setup(self) -> Callable[[], None] | None:
        """What COMMAND's process runs before exec: become the pty's session leader."""
        return self.terminal.child_setup if self.terminal is not None else None

    def start(self, session: Session) -> None:
        """The agent answered and COMMAND is about to run: draw, pump, watch."""
        if self.view is None or self.state is None:
            return
        state = self.state

        def streams() -> None:
            state.set_streams(session.open_streams())

        self.view.set_on_refresh(streams)
        # A frame takes a few ms of Python on rich's refresh thread; a tracee's stop
        # must not wait that long for the GIL (the default hand-over is after 5 ms).
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL)
        self.view.start()
        self._stop_watch = session.watch_agent(state.set_agent, AGENT_WATCH_EVERY)
        if self.terminal is not None:
            self.terminal.start(self.view.app_output)

    def interrupt(self, sig: int) -> None:
        """Pass ^C/^\\ on to COMMAND's terminal (without one of ours, the real terminal
        signals COMMAND itself: it shares our process group)."""
        if self.terminal is not None:
            self.terminal.interrupt(sig)

    def suspend(self) -> None:
        """^Z: COMMAND stops with us (see AppTerminal.suspend); the shell gets the
        terminal back as it lent it, cursor included."""
        if self.terminal is not None:
            self.terminal.interrupt(signal.SIGTSTP)
            self.terminal.suspend()
        if self.view is not None:
            self.view.pause()

    def resume(self) -> None:
        if self.terminal is not None:
            self.terminal.resume()
        if self.view is not None:
            self.view.resume()

    def finish(self, exit_status: int | None) -> None:
        """COMMAND is over: its last output, then the summary (None: the run failed,
        and its error, not a summary, is the last word). Idempotent."""
        if self._finished:
            return
        self._finished = True
        if self._stop_watch is not None:
            self._stop_watch()
        if self.terminal is not None:
            self.terminal.close()  # drains what COMMAND wrote last, gives the terminal back
        if self.view is not None:
            if self.view.started:
                self.view.stop(exit_status, summary=exit_status is not None)
                sys.setswitchinterval(self._switch_interval)
        elif self.state is not None and exit_status is not None:
            from supervisor.dashboard import plain_summary

            self.state.finished(exit_status)
            sys.stderr.write(plain_summary(self.state) + "\n")
            sys.stderr.flush()

    def close(self) -> None:
        """Whatever happened: the real terminal as it was, the view gone. Idempotent."""
        try:
            self.finish(None)
        finally:
            if self.terminal is not None:
                self.terminal.close()

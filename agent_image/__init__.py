"""The mirrortrace agent and the wire protocol it shares with the supervisor.

Standard library only: this package is all that ships in the agent image.
"""

__version__ = "0.1.0"

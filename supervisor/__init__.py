"""The mirrortrace supervisor: CLI, ptrace engine, session, relays and transports."""

"""Syscall handlers, one family per module, registered in syscalls.table."""

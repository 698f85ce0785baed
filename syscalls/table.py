"""The syscall table: every syscall mirrortrace stops, and what handles it.

One explicit, alphabetical mapping (gVisor's linux64.go, strace's
syscallent.h): the keys are exactly the syscalls the seccomp filter traps or
refuses, so the whole surface reads in one place and `mirrortrace syscalls`
prints it. Nothing registers itself on import.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from syscalls import files, net, process
from syscalls.base import Handler

FULL = "full"
PARTIAL = "partial"
REFUSED = "refused"


@dataclass(frozen=True)
class Entry:
    handler: Handler | None
    support: str
    note: str
    refuse: int | None = None  # answered by the filter itself with this errno
    only_if_arg: int | None = None  # trapped only when this argument is non-zero
    # Calls that can only matter once the program uses a pod path (fstat of a copy,
    # getcwd inside a pod directory) are trapped by a second filter added to a process
    # at that moment, so programs that never touch the pod never stop for them.
    pod_only: bool = False
    empty_path_arg: int | None = None  # this flags argument's AT_EMPTY_PATH form is pod_only


_POD = "pod paths per the --fs policy"
_ANSWERED = _POD + "; answered from the pod's metadata"
_CHANGES = _POD + "; write mode changes the pod, read mode EROFS, across EXDEV"

TABLE: dict[str, Entry] = {
    "access": Entry(files.access, FULL, _POD + "; the target's own permissions"),
    "chdir": Entry(files.chdir, FULL, _POD + "; enters the directory's mirror in the cache"),
    "clone": Entry(process.clone, FULL, "CLONE_UNTRACED cleared"),
    "clone3": Entry(None, REFUSED, "ENOSYS: flags live in memory the filter cannot see; "
                    "libc falls back to clone", refuse=errno.ENOSYS),
    "connect": Entry(net.connect, FULL, "TCP and UDP to diverted destinations go via the agent"),
    "creat": Entry(files.creat, FULL, _POD + "; created in the pod (write mode)"),
    "execve": Entry(files.execve, FULL, "a pod path is refused (EACCES): programs run from here"),
    "faccessat": Entry(files.faccessat, FULL, _POD + "; the target's own permissions"),
    "faccessat2": Entry(files.faccessat2, FULL, _POD + "; the target's own permissions"),
    "fstat": Entry(files.fstat, FULL, "an fd on a pod file shows the pod's metadata",
                   pod_only=True),
    "getcwd": Entry(files.getcwd, FULL, "inside a pod directory, the pod path", pod_only=True),
    "getpeername": Entry(net.getpeername, FULL, "relay address replaced by the remote's"),
    "getsockname": Entry(net.getsockname, FULL, "a diverted socket shows its pod-side address"),
    "getxattr": Entry(files.getxattr, PARTIAL, _POD + "; the pod's xattrs are not fetched"),
    "io_uring_setup": Entry(None, REFUSED, "ENOSYS: io_uring would bypass the supervisor",
                            refuse=errno.ENOSYS),
    "lgetxattr": Entry(files.lgetxattr, PARTIAL, _POD + "; the pod's xattrs are not fetched"),
    "listen": Entry(net.listen, FULL, "shown as a listen event"),
    "listxattr": Entry(files.listxattr, PARTIAL, _POD + "; the pod's xattrs are not fetched"),
    "llistxattr": Entry(files.llistxattr, PARTIAL, _POD + "; the pod's xattrs are not fetched"),
    "lstat": Entry(files.lstat, FULL, _ANSWERED),
    "mkdir": Entry(files.mkdir, FULL, _CHANGES),
    "mkdirat": Entry(files.mkdirat, FULL, _CHANGES),
    "newfstatat": Entry(files.newfstatat, FULL, _ANSWERED + "; fstat of an fd on a pod file too",
                        empty_path_arg=3),
    "open": Entry(files.open_, FULL, _POD + "; resolver files are always the pod's"),
    "openat": Entry(files.openat, FULL, _POD + "; resolver files are always the pod's"),
    "openat2": Entry(files.openat2, PARTIAL, _POD + "; RESOLVE_* flags are applied in the pod "
                     "as RESOLVE_IN_ROOT"),
    "readlink": Entry(files.readlink, FULL, _POD + "; /proc links into the cache show pod paths"),
    "readlinkat": Entry(files.readlinkat, FULL, _POD + "; /proc links into the cache show pod "
                        "paths"),
    "recvfrom": Entry(net.recvfrom, FULL, "relay source replaced by the remote's",
                      only_if_arg=4),
    "recvmmsg": Entry(net.recvmmsg, FULL, "relay sources replaced by the remotes'"),
    "recvmsg": Entry(net.recvmsg, FULL, "relay source replaced by the remote's"),
    "rename": Entry(files.rename, FULL, _CHANGES),
    "renameat": Entry(files.renameat, FULL, _CHANGES),
    "renameat2": Entry(files.renameat2, FULL, _CHANGES),
    "rmdir": Entry(files.rmdir, FULL, _CHANGES),
    "sendmmsg": Entry(net.sendmmsg, PARTIAL, "named datagrams sent one per call"),
    "sendmsg": Entry(net.sendmsg, FULL, "named datagrams to diverted destinations"),
    "sendto": Entry(net.sendto, FULL, "named datagrams to diverted destinations",
                    only_if_arg=4),
    "stat": Entry(files.stat, FULL, _ANSWERED),
    "statx": Entry(files.statx, FULL, _ANSWERED + "; fstat of an fd on a pod file too",
                   empty_path_arg=2),
    "truncate": Entry(files.truncate, FULL, _CHANGES),
    "uname": Entry(process.uname, FULL, "nodename is the pod's"),
    "unlink": Entry(files.unlink, FULL, _CHANGES),
    "unlinkat": Entry(files.unlinkat, FULL, _CHANGES),
}

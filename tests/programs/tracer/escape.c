/*
 * escape: the ways a child could leave the tracer's sight must all be closed.
 *
 * - clone3(2) carries its flags in memory the seccomp filter cannot read (CLONE_UNTRACED
 *   could hide there): it must fail with ENOSYS, so libc falls back to clone(2).
 * - io_uring_setup(2) would let the program connect and open files with no syscall the
 *   tracer sees: ENOSYS too.
 * - clone(CLONE_UNTRACED|SIGCHLD) must still give a traced child (the supervisor clears the
 *   flag): the child reports its TracerPid and does a diverted connect + GET, which an
 *   untraced child under the inherited filter could not (every trapped call -> ENOSYS).
 *
 * Prints "clone3 -1 ENOSYS", "io_uring_setup -1 ENOSYS", then from the child
 * "child_tracerpid N", "connect 0", "status 200", "body ...", and "child_status 0".
 */
#include <linux/sched.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include "common.h"

#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#ifndef SYS_io_uring_setup
#define SYS_io_uring_setup 425
#endif

int main(void)
{
	struct clone_args args;
	memset(&args, 0, sizeof args);
	args.flags = CLONE_UNTRACED;
	args.exit_signal = SIGCHLD;
	fflush(stdout);
	long rc = syscall(SYS_clone3, &args, sizeof args);
	if (rc == 0)
		_exit(0); /* an escaped child: say nothing, the parent's line tells */
	say("clone3 %ld%s%s\n", rc, rc < 0 ? " " : "", rc < 0 ? errname(errno) : "");
	if (rc > 0)
		waitpid((pid_t)rc, NULL, 0);

	unsigned char params[120]; /* struct io_uring_params */
	memset(params, 0, sizeof params);
	rc = syscall(SYS_io_uring_setup, 4, params);
	say("io_uring_setup %ld%s%s\n", rc, rc < 0 ? " " : "", rc < 0 ? errname(errno) : "");
	if (rc >= 0)
		close((int)rc);

	fflush(stdout);
	rc = syscall(SYS_clone, CLONE_UNTRACED | SIGCHLD, 0, NULL, NULL, 0);
	if (rc < 0)
		die("clone");
	if (rc == 0) {
		say("child_tracerpid %d\n", tracer_pid());
		int fd = connect_tcp4(WEB_IP, WEB_PORT);
		_exit(fd < 0 || print_get(fd, "/hello") ? 1 : 0);
	}
	int status;
	if (waitpid((pid_t)rc, &status, 0) < 0)
		die("waitpid");
	say("child_status %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
	return 0;
}

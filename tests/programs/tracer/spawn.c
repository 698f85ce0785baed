/*
 * spawn: start a child that does a diverted connect, with vfork+exec or posix_spawn.
 *
 * Usage: spawn vfork|posix_spawn HTTPGET
 *   runs `HTTPGET WEB_IP WEB_PORT /hello 5`; its body reaches our stdout directly, then we
 *   print "child_status N" (the child's exit status: 5 when its GET worked).
 * vfork shares the parent's memory until the exec (CLONE_VM|CLONE_VFORK), and glibc's
 * posix_spawn uses clone(CLONE_VM|CLONE_VFORK) on a separate stack: both must leave the
 * child traced with an address space of its own after the exec.
 */
#include <spawn.h>
#include <sys/wait.h>

#include "common.h"

extern char **environ;

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: %s vfork|posix_spawn HTTPGET\n", argv[0]);
		return 2;
	}
	char port[16];
	snprintf(port, sizeof port, "%d", WEB_PORT);
	char *child_argv[] = {argv[2], (char *)WEB_IP, port, (char *)"/hello", (char *)"5", NULL};
	pid_t pid;
	fflush(stdout);
	if (!strcmp(argv[1], "vfork")) {
		pid = vfork();
		if (pid == 0) {
			execve(argv[2], child_argv, environ);
			_exit(127);
		}
		if (pid < 0)
			die("vfork");
	} else if (!strcmp(argv[1], "posix_spawn")) {
		int rc = posix_spawn(&pid, argv[2], NULL, NULL, child_argv, environ);
		if (rc) {
			errno = rc;
			die("posix_spawn");
		}
	} else {
		fprintf(stderr, "usage: %s vfork|posix_spawn HTTPGET\n", argv[0]);
		return 2;
	}
	int status;
	if (waitpid(pid, &status, 0) < 0)
		die("waitpid");
	if (WIFEXITED(status))
		say("child_status %d\n", WEXITSTATUS(status));
	else
		say("child_signal %d\n", WTERMSIG(status));
	return 0;
}

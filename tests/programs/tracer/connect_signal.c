/*
 * connect_signal: a blocking connect to TIMEOUT_IP interrupted by a signal.
 *
 *   connect_signal eintr     SIGALRM handler without SA_RESTART, alarm(1): Linux returns
 *                            -1 EINTR after ~1 s; prints "connect -1 EINTR", "handler 1"
 *   connect_signal restart   the same with SA_RESTART: the handler runs, then the connect
 *                            carries on (the kernel restarts it: -ERESTARTSYS) and ends
 *                            as the pod's SYNs time out: "connect -1 ETIMEDOUT", "handler 1"
 *   connect_signal wait      prints "pid N" and "connecting", then blocks in the connect
 *                            (the test stops or SIGKILLs it there), then "connect ..."
 *   connect_signal sigchld   a child exits 0.5 s into the connect; SIGCHLD's default action
 *                            is to ignore it, so the connect goes on: "connect -1 ETIMEDOUT"
 *                            (a traced process does get ignored signals queued, for the
 *                            tracer to see: a supervisor holding the connect must not
 *                            turn that into EINTR)
 * Each also prints "elapsed_ms N" (for people; tests assert errnos, not times).
 */
#include <signal.h>
#include <sys/wait.h>

#include "common.h"

static volatile sig_atomic_t handled;

static void on_alarm(int sig)
{
	(void)sig;
	handled++;
}

static int interrupted(int flags)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_alarm;
	sa.sa_flags = flags;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGALRM, &sa, NULL) < 0)
		die("sigaction");
	alarm(1);
	double t0 = now_ms();
	int fd = connect_tcp4(TIMEOUT_IP, 80);
	say("handler %d\nelapsed_ms %.0f\n", (int)handled, now_ms() - t0);
	if (fd >= 0)
		close(fd);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 2 && !strcmp(argv[1], "eintr"))
		return interrupted(0);
	if (argc == 2 && !strcmp(argv[1], "restart"))
		return interrupted(SA_RESTART);
	if (argc == 2 && !strcmp(argv[1], "wait")) {
		say("pid %d\nconnecting\n", (int)getpid());
		connect_tcp4(TIMEOUT_IP, 80);
		return 0;
	}
	if (argc == 2 && !strcmp(argv[1], "sigchld")) {
		fflush(stdout);
		pid_t pid = fork();
		if (pid == 0) {
			usleep(500 * 1000);
			_exit(0);
		}
		double t0 = now_ms();
		connect_tcp4(TIMEOUT_IP, 80);
		say("elapsed_ms %.0f\n", now_ms() - t0);
		int status;
		say("child_reaped %d\n", waitpid(pid, &status, 0) == pid);
		return 0;
	}
	fprintf(stderr, "usage: %s eintr | restart | wait | sigchld\n", argv[0]);
	return 2;
}

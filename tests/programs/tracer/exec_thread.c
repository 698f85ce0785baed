/*
 * exec_thread: execve from a thread that is not the thread-group leader.
 *
 * Usage: exec_thread plain|parked HTTPGET
 *   A second thread execs `HTTPGET WEB_IP WEB_PORT /hello 7`. The kernel kills every other
 *   thread and the exec'ing thread takes over the leader's tid (the tracer sees its
 *   PTRACE_EVENT_EXEC under the old tid's number in GETEVENTMSG). HTTPGET's body is the
 *   output and 7 the exit status. With "parked" the main thread is at that moment inside a
 *   connect to TIMEOUT_IP that the supervisor holds (waiting ~3 s for the pod to give up):
 *   the exec must not wait for it, nor trip over it.
 * Prints "leader PID" and "exec from TID" first.
 */
#include <pthread.h>
#include <sys/syscall.h>

#include "common.h"

extern char **environ;

static const char *httpget;

static void *exec_it(void *arg)
{
	int delay_ms = (int)(long)arg;
	char port[16];
	snprintf(port, sizeof port, "%d", WEB_PORT);
	char *child_argv[] = {(char *)httpget, (char *)WEB_IP, port, (char *)"/hello",
			      (char *)"7", NULL};
	if (delay_ms)
		usleep((useconds_t)delay_ms * 1000);
	say("exec from %ld\n", (long)syscall(SYS_gettid));
	execve(httpget, child_argv, environ);
	say("execve -1 %s\n", errname(errno));
	_exit(1);
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: %s plain|parked HTTPGET\n", argv[0]);
		return 2;
	}
	httpget = argv[2];
	int parked = !strcmp(argv[1], "parked");
	say("leader %d\n", (int)getpid());
	pthread_t t;
	if (pthread_create(&t, NULL, exec_it, (void *)(long)(parked ? 300 : 0)))
		die("pthread_create");
	if (parked) {
		struct sockaddr_in sin = inet4(TIMEOUT_IP, 80);
		int fd = socket(AF_INET, SOCK_STREAM, 0);
		connect(fd, (struct sockaddr *)&sin, sizeof sin);
		say("main connect returned %s\n", errname(errno));
	}
	pthread_join(t, NULL);
	say("main thread survived the exec\n");
	return 1;
}

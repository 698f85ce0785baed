/*
 * daemon: the classic double fork (fork, setsid, fork, the middle one exits).
 *
 * Usage: daemon STATEFILE
 *   The grandchild detaches (new session, stdio on /dev/null, as real daemons do), does a
 *   diverted connect and GET /hello, writes STATEFILE (atomically, by rename) with lines
 *   "pid N", "tracerpid N" (from /proc/self/status: non-zero while traced), "connect 0",
 *   "status 200", "body hello from web", and then sleeps 60 s. The original process waits
 *   for STATEFILE, prints "daemon PID" and exits 0, leaving the grandchild running: when
 *   mirrortrace returns, nothing it traced may be left alive.
 */
#include <fcntl.h>
#include <sys/wait.h>

#include "common.h"

static void grandchild(const char *state)
{
	int null = open("/dev/null", O_RDWR);
	dup2(null, 0);
	dup2(null, 1);
	dup2(null, 2);
	char tmp[4096];
	snprintf(tmp, sizeof tmp, "%s.tmp", state);
	FILE *out = fopen(tmp, "w");
	if (!out)
		_exit(1);
	fprintf(out, "pid %d\ntracerpid %d\n", (int)getpid(), tracer_pid());
	struct sockaddr_in sin = inet4(WEB_IP, WEB_PORT);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (connect(fd, (struct sockaddr *)&sin, sizeof sin) < 0) {
		fprintf(out, "connect -1 %s\n", errname(errno));
	} else {
		char *body = NULL;
		size_t len;
		int status = http_get(fd, "/hello", &body, &len);
		fprintf(out, "connect 0\nstatus %d\nbody %s", status, body ? body : "\n");
	}
	fclose(out);
	rename(tmp, state);
	sleep(60);
	_exit(0);
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s STATEFILE\n", argv[0]);
		return 2;
	}
	fflush(stdout);
	pid_t mid = fork();
	if (mid < 0)
		die("fork");
	if (mid == 0) {
		setsid();
		pid_t pid = fork();
		if (pid == 0)
			grandchild(argv[1]);
		_exit(pid < 0);
	}
	int status;
	waitpid(mid, &status, 0);
	say("middle_status %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
	for (int i = 0; i < 200 && access(argv[1], F_OK) != 0; i++)
		usleep(50 * 1000);
	FILE *f = fopen(argv[1], "r");
	int pid = -1;
	if (!f || fscanf(f, "pid %d", &pid) != 1) {
		say("no state file\n");
		return 1;
	}
	fclose(f);
	say("daemon %d\n", pid);
	return 0;
}

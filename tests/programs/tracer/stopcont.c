/*
 * stopcont: a program that can be stopped and resumed from outside, then finishes its work.
 *
 * Usage: stopcont MS
 *   prints "pid N", sleeps MS milliseconds in 50 ms steps (where the test stops and resumes
 *   it), prints "slept_ms N" (wall time of those steps: it grows by the time spent stopped),
 *   then does a diverted GET /hello: "connect 0", "status 200", "body ...", "done".
 */
#include "common.h"

int main(int argc, char **argv)
{
	int ms = argc == 2 ? atoi(argv[1]) : 2000;
	say("pid %d\n", (int)getpid());
	double t0 = now_ms();
	for (int i = 0; i < ms / 50; i++)
		usleep(50 * 1000);
	say("slept_ms %.0f\n", now_ms() - t0);
	int fd = connect_tcp4(WEB_IP, WEB_PORT);
	if (fd < 0 || print_get(fd, "/hello"))
		return 1;
	say("done\n");
	return 0;
}

/*
 * exit_signal: die in the ways whose status mirrortrace must pass on.
 *
 *   exit_signal segv     write through a NULL pointer: killed by SIGSEGV (128+11)
 *   exit_signal raise N  raise(N) with the default action
 *   exit_signal wait     print "pid N" and wait in pause() for a signal from outside
 */
#include <signal.h>

#include "common.h"

int main(int argc, char **argv)
{
	if (argc == 2 && !strcmp(argv[1], "segv")) {
		say("segv\n");
		*(volatile int *)(long)(argc - 2) = 1;
		return 0;
	}
	if (argc == 3 && !strcmp(argv[1], "raise")) {
		say("raise %s\n", argv[2]);
		raise(atoi(argv[2]));
		return 0;
	}
	if (argc == 2 && !strcmp(argv[1], "wait")) {
		say("pid %d\n", (int)getpid());
		for (;;)
			pause();
	}
	fprintf(stderr, "usage: %s segv | raise N | wait\n", argv[0]);
	return 2;
}

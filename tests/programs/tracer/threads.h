/*
 * threads.h: start N threads that wait on one barrier (so their syscalls really race), join
 * them, print "ok COUNT" and return the exit status (0 when every worker returned NULL).
 */
#ifndef MT_THREADS_H
#define MT_THREADS_H

#include <pthread.h>

#include "common.h"

static pthread_barrier_t barrier;

static MT_UNUSED int run_threads(int nthreads, void *(*worker)(void *))
{
	pthread_t *t = calloc((size_t)nthreads, sizeof *t);
	pthread_barrier_init(&barrier, NULL, (unsigned)nthreads);
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, 256 * 1024);
	for (int i = 0; i < nthreads; i++)
		if (pthread_create(&t[i], &attr, worker, (void *)(long)i))
			die("pthread_create");
	int ok = 0;
	for (int i = 0; i < nthreads; i++) {
		void *res;
		pthread_join(t[i], &res);
		ok += res == NULL;
	}
	say("ok %d\n", ok);
	return ok == nthreads ? 0 : 1;
}

#endif

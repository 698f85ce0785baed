/*
 * many_threads: N threads (default 200) connect at the same instant, each to its own stream.
 *
 * Thread i connects to WEB_IP (even i) or [WEB_IP6] (odd i), port WEB_PORT, and GETs
 * /bytes/(BASE + 37*i): each thread must get exactly its own byte count, and the test
 * recomputes the FNV-1a of each stream from podweb's deterministic bytes, so a relay that
 * crossed two streams, or a parked thread woken with another's answer, shows.
 *
 * Prints one "thread I N LEN FNV" line per thread (or "thread I error ..."), then "ok COUNT".
 */

#include "threads.h"

#define BASE 1000

static int nthreads = 200;

static void *worker(void *arg)
{
	int i = (int)(long)arg;
	int n = BASE + 37 * i;
	struct sockaddr_storage ss;
	socklen_t len;
	int fam;
	if (i % 2 == 0) {
		struct sockaddr_in sin = inet4(WEB_IP, WEB_PORT);
		memcpy(&ss, &sin, sizeof sin);
		len = sizeof sin;
		fam = AF_INET;
	} else {
		struct sockaddr_in6 sin6 = inet6(WEB_IP6, WEB_PORT);
		memcpy(&ss, &sin6, sizeof sin6);
		len = sizeof sin6;
		fam = AF_INET6;
	}
	int fd = socket(fam, SOCK_STREAM, 0);
	if (fd < 0) {
		say("thread %d error socket %s\n", i, errname(errno));
		return (void *)1;
	}
	pthread_barrier_wait(&barrier);
	if (connect(fd, (struct sockaddr *)&ss, len) < 0) {
		say("thread %d error connect %s\n", i, errname(errno));
		close(fd);
		return (void *)1;
	}
	char path[64];
	snprintf(path, sizeof path, "/bytes/%d", n);
	char *body = NULL;
	size_t got = 0;
	int status = http_get(fd, path, &body, &got);
	close(fd);
	if (status != 200) {
		say("thread %d error http %d %s\n", i, status, errname(errno));
		return (void *)1;
	}
	say("thread %d %d %zu %016llx\n", i, n, got, fnv1a(body, got));
	free(body);
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc > 1)
		nthreads = atoi(argv[1]);
	return run_threads(nthreads, worker);
}

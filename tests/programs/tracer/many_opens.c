/*
 * many_opens: N threads (default 200) open the resolver files at the same instant.
 *
 *   many_opens open [N [ROUNDS]]    each thread opens /etc/resolv.conf ROUNDS times (default
 *                                   20) and reads its nameserver line
 *   many_opens resolve [N]          each thread calls getaddrinfo(WEB_FQDN) once
 *
 * Every such open is diverted by pointing the path argument at scratch memory in the
 * program; a supervisor that runs out of scratch space when many threads are inside such a
 * call at once must not quietly let the open through to the laptop's file.
 * Prints "thread I ok" or "thread I bad WHAT" per thread, then "ok COUNT".
 */
#include <fcntl.h>
#include <netdb.h>

#include "threads.h"

static int nthreads = 200, rounds = 20, resolve;

static const char *check_open(void)
{
	static __thread char why[96];
	int fd = open("/etc/resolv.conf", O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		snprintf(why, sizeof why, "open %s", errname(errno));
		return why;
	}
	char buf[1024], ip[64] = "none";
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	buf[n > 0 ? n : 0] = 0;
	char *ns = strstr(buf, "nameserver");
	if (ns)
		sscanf(ns, "nameserver %63s", ip);
	if (strcmp(ip, DNS_IP)) {
		snprintf(why, sizeof why, "nameserver %s", ip);
		return why;
	}
	return NULL;
}

static const char *check_resolve(void)
{
	static __thread char why[96];
	struct addrinfo hints, *res;
	memset(&hints, 0, sizeof hints);
	hints.ai_family = AF_INET;
	hints.ai_socktype = SOCK_STREAM;
	int rc = getaddrinfo(WEB_FQDN, "80", &hints, &res);
	if (rc) {
		snprintf(why, sizeof why, "getaddrinfo %s", gai_strerror(rc));
		return why;
	}
	char ip[INET_ADDRSTRLEN];
	inet_ntop(AF_INET, &((struct sockaddr_in *)res->ai_addr)->sin_addr, ip, sizeof ip);
	freeaddrinfo(res);
	if (strcmp(ip, WEB_IP)) {
		snprintf(why, sizeof why, "address %s", ip);
		return why;
	}
	return NULL;
}

static void *worker(void *arg)
{
	int i = (int)(long)arg;
	pthread_barrier_wait(&barrier);
	for (int r = 0; r < (resolve ? 1 : rounds); r++) {
		const char *bad = resolve ? check_resolve() : check_open();
		if (bad) {
			say("thread %d bad %s\n", i, bad);
			return (void *)1;
		}
	}
	say("thread %d ok\n", i);
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc < 2 || (strcmp(argv[1], "open") && strcmp(argv[1], "resolve"))) {
		fprintf(stderr, "usage: %s open [N [ROUNDS]] | resolve [N]\n", argv[0]);
		return 2;
	}
	resolve = !strcmp(argv[1], "resolve");
	if (argc > 2)
		nthreads = atoi(argv[2]);
	if (argc > 3)
		rounds = atoi(argv[3]);
	return run_threads(nthreads, worker);
}

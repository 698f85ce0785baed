/*
 * muslclient: a statically linked musl test client for mirrortrace.
 *
 * musl's resolver differs from glibc's in ways a supervisor must get right: it reads
 * /etc/resolv.conf and /etc/hosts itself, sends its queries in parallel from one socket
 * and drops replies whose source address is not a configured nameserver. Being static,
 * no LD_PRELOAD trick can reach it.
 *
 * Usage: muslclient HOST PORT PATH
 *   getaddrinfo(HOST, PORT), connect to the first address that accepts, send
 *   "GET PATH HTTP/1.0", print the response body on stdout.
 * Exit 0 on an HTTP 2xx answer. On failure, one line on stderr and exit 1:
 *   "getaddrinfo: <gai_strerror>", "connect: <strerror>", "http: <status line>", ...
 *
 * Build: musl-gcc -static -O2 -o muslclient muslclient.c
 */
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

static int write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: %s HOST PORT PATH\n", argv[0]);
		return 2;
	}
	const char *host = argv[1], *port = argv[2], *path = argv[3];

	struct addrinfo hints, *res, *ai;
	memset(&hints, 0, sizeof hints);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	int rc = getaddrinfo(host, port, &hints, &res);
	if (rc != 0) {
		fprintf(stderr, "getaddrinfo: %s\n", gai_strerror(rc));
		return 1;
	}

	int fd = -1, err = 0;
	for (ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
		if (fd < 0) {
			err = errno;
			continue;
		}
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
			break;
		err = errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0) {
		fprintf(stderr, "connect: %s\n", strerror(err));
		return 1;
	}

	char req[2048];
	int len = snprintf(req, sizeof req,
			   "GET %s HTTP/1.0\r\nHost: %s\r\nUser-Agent: muslclient\r\n\r\n", path, host);
	if (len < 0 || (size_t)len >= sizeof req) {
		fprintf(stderr, "request too long\n");
		return 1;
	}
	if (write_all(fd, req, (size_t)len) < 0) {
		fprintf(stderr, "write: %s\n", strerror(errno));
		return 1;
	}

	/* Read the whole answer (HTTP/1.0: the server closes), then split off the headers. */
	size_t cap = 1 << 16, used = 0;
	char *buf = malloc(cap);
	if (!buf)
		return 1;
	for (;;) {
		if (used == cap) {
			cap *= 2;
			buf = realloc(buf, cap);
			if (!buf)
				return 1;
		}
		ssize_t n = read(fd, buf + used, cap - used);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			fprintf(stderr, "read: %s\n", strerror(errno));
			return 1;
		}
		if (n == 0)
			break;
		used += (size_t)n;
	}
	close(fd);

	char *body = NULL;
	for (size_t i = 0; i + 3 < used; i++) {
		if (memcmp(buf + i, "\r\n\r\n", 4) == 0) {
			body = buf + i + 4;
			break;
		}
	}
	if (!body) {
		fprintf(stderr, "http: no complete response (%zu bytes)\n", used);
		return 1;
	}
	if (write_all(1, body, used - (size_t)(body - buf)) < 0)
		return 1;
	int status = 0;
	if (sscanf(buf, "HTTP/%*s %d", &status) != 1 || status < 200 || status > 299) {
		char *eol = memchr(buf, '\r', used);
		fprintf(stderr, "http: %.*s\n", eol ? (int)(eol - buf) : 40, buf);
		return 1;
	}
	return 0;
}

/*
 * httpget: the program the exec tests start: resolve, connect, GET, print the body.
 *
 * Usage: httpget HOST PORT PATH [EXIT]
 *   getaddrinfo(HOST) (a name goes through the pod's resolver files and DNS), connect to
 *   the first address that accepts, GET PATH; the body goes to stdout as is, and the exit
 *   status is EXIT (default 0) on HTTP 200. On failure one line on stderr and exit 1.
 */
#include <netdb.h>

#include "common.h"

int main(int argc, char **argv)
{
	if (argc != 4 && argc != 5) {
		fprintf(stderr, "usage: %s HOST PORT PATH [EXIT]\n", argv[0]);
		return 2;
	}
	struct addrinfo hints, *res, *ai;
	memset(&hints, 0, sizeof hints);
	hints.ai_socktype = SOCK_STREAM;
	int gai = getaddrinfo(argv[1], argv[2], &hints, &res);
	if (gai) {
		fprintf(stderr, "getaddrinfo: %s\n", gai_strerror(gai));
		return 1;
	}
	int fd = -1, err = 0;
	for (ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
		if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
			break;
		err = errno;
		if (fd >= 0)
			close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0) {
		fprintf(stderr, "connect: %s\n", errname(err));
		return 1;
	}
	char *body = NULL;
	size_t len = 0;
	int status = http_get(fd, argv[3], &body, &len);
	if (status != 200) {
		fprintf(stderr, "http: status %d (%s)\n", status, errname(errno));
		return 1;
	}
	fwrite(body, 1, len, stdout);
	return argc == 5 ? atoi(argv[4]) : 0;
}

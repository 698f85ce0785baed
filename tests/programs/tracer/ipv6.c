/*
 * ipv6: AF_INET6 TCP connects, native and v4-mapped.
 *
 *   ipv6 native          connect to [WEB_IP6]:WEB_PORT
 *   ipv6 mapped          IPV6_V6ONLY=0, connect to [::ffff:WEB_IP]:WEB_PORT (the JVM's way)
 *   ipv6 mapped-v6only   IPV6_V6ONLY=1, the same address: Linux says ENETUNREACH
 *                        (tcp_v6_connect refuses v4-mapped on a v6-only socket)
 *
 * Prints "connect 0" or "connect -1 ERRNO", then "peer ADDRESS" (getpeername, via
 * inet_ntop: exactly the address asked for) and, when connected, "status"/"body".
 */
#include "common.h"

int main(int argc, char **argv)
{
	const char *mode = argc == 2 ? argv[1] : "";
	char mapped[64];
	snprintf(mapped, sizeof mapped, "::ffff:%s", WEB_IP);
	const char *ip;
	int v6only = -1;
	if (!strcmp(mode, "native")) {
		ip = WEB_IP6;
	} else if (!strcmp(mode, "mapped")) {
		ip = mapped;
		v6only = 0;
	} else if (!strcmp(mode, "mapped-v6only")) {
		ip = mapped;
		v6only = 1;
	} else {
		fprintf(stderr, "usage: %s native | mapped | mapped-v6only\n", argv[0]);
		return 2;
	}
	struct sockaddr_in6 sin6 = inet6(ip, WEB_PORT);
	int fd = socket(AF_INET6, SOCK_STREAM, 0);
	if (fd < 0)
		die("socket");
	if (v6only >= 0 &&
	    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only) < 0)
		die("setsockopt");
	if (connect(fd, (struct sockaddr *)&sin6, sizeof sin6) < 0) {
		say("connect -1 %s\n", errname(errno));
		print_name("peer", fd, 1);
		return 0;
	}
	say("connect 0\n");
	print_name("peer", fd, 1);
	return print_get(fd, "/hello") ? 1 : 0;
}

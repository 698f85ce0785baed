/*
 * udp_dns: a hand-built DNS query to DNS_IP:53 over UDP, and the addresses the answers show.
 *
 *   udp_dns connected   connect() then send()/recv(); "peer ADDRESS" (getpeername)
 *   udp_dns sendto      unconnected sendto()/recvfrom(); "from ADDRESS"
 *   udp_dns recvmsg     unconnected sendto()/recvmsg() with msg_name; "from ADDRESS"
 *
 * The query asks for the A record of WEB_FQDN. Each mode prints "sent N", "received N",
 * "id_match 1", "rcode 0" and one "answer IP" line per A record.
 */
#include <poll.h>

#include "common.h"
#include "dns.h"

static void wait_readable(int fd)
{
	struct pollfd pfd = {.fd = fd, .events = POLLIN};
	if (poll(&pfd, 1, 10000) != 1) {
		say("timeout\n");
		exit(1);
	}
}

int main(int argc, char **argv)
{
	const char *mode = argc == 2 ? argv[1] : "";
	unsigned char q[512], r[1500];
	unsigned short id = (unsigned short)(getpid() * 7 + 0x1234);
	int qlen = build_query(q, id);
	struct sockaddr_in dns = inet4(DNS_IP, 53);
	struct sockaddr_storage from;
	socklen_t fromlen = sizeof from;
	char buf[128];
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0)
		die("socket");
	ssize_t n;
	if (!strcmp(mode, "connected")) {
		if (connect(fd, (struct sockaddr *)&dns, sizeof dns) < 0)
			die("connect");
		say("connect 0\n");
		print_name("peer", fd, 1);
		say("sent %zd\n", send(fd, q, (size_t)qlen, 0));
		wait_readable(fd);
		n = recv(fd, r, sizeof r, 0);
	} else if (!strcmp(mode, "sendto")) {
		say("sent %zd\n", sendto(fd, q, (size_t)qlen, 0, (struct sockaddr *)&dns,
					 sizeof dns));
		wait_readable(fd);
		memset(&from, 0, sizeof from);
		n = recvfrom(fd, r, sizeof r, 0, (struct sockaddr *)&from, &fromlen);
		say("from %s\n", fmt_sockaddr(&from, buf, sizeof buf));
	} else if (!strcmp(mode, "recvmsg")) {
		say("sent %zd\n", sendto(fd, q, (size_t)qlen, 0, (struct sockaddr *)&dns,
					 sizeof dns));
		wait_readable(fd);
		memset(&from, 0, sizeof from);
		struct iovec iov = {.iov_base = r, .iov_len = sizeof r};
		struct msghdr msg = {.msg_name = &from, .msg_namelen = sizeof from,
				     .msg_iov = &iov, .msg_iovlen = 1};
		n = recvmsg(fd, &msg, 0);
		say("namelen %d\n", (int)msg.msg_namelen);
		say("from %s\n", fmt_sockaddr(&from, buf, sizeof buf));
	} else {
		fprintf(stderr, "usage: %s connected | sendto | recvmsg\n", argv[0]);
		return 2;
	}
	if (n < 0) {
		say("recv -1 %s\n", errname(errno));
		return 1;
	}
	print_answer(r, (int)n, id);
	return 0;
}

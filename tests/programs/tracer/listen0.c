/*
 * listen0: bind to port 0 and listen; a client in the same program connects on loopback.
 *
 * The kernel picks the port at listen(); getsockname must show it (non-zero), and a connect
 * to 127.0.0.1 is loopback: it must stay local, never be sent to the pod.
 * Prints "port N", "connect 0", "peer 127.0.0.1:N", "accepted 1", "echo ping".
 */
#include "common.h"

int main(void)
{
	int srv = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in any = inet4("0.0.0.0", 0);
	if (srv < 0 || bind(srv, (struct sockaddr *)&any, sizeof any) < 0)
		die("bind");
	if (listen(srv, 16) < 0)
		die("listen");
	struct sockaddr_in me;
	socklen_t len = sizeof me;
	if (getsockname(srv, (struct sockaddr *)&me, &len) < 0)
		die("getsockname");
	int port = ntohs(me.sin_port);
	say("port %d\n", port);
	int cli = connect_tcp4("127.0.0.1", port);
	if (cli < 0)
		return 1;
	print_name("peer", cli, 1);
	int conn = accept(srv, NULL, NULL);
	say("accepted %d\n", conn >= 0);
	if (conn < 0)
		return 1;
	if (write_all(cli, "ping", 4) < 0)
		die("write");
	char buf[8] = {0};
	ssize_t n = read(conn, buf, 4);
	say("echo %.*s\n", (int)(n > 0 ? n : 0), buf);
	return 0;
}

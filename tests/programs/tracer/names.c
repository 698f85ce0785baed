/*
 * names: the addresses a diverted TCP socket shows, and what the web server saw.
 *
 * Connects to WEB_IP:WEB_PORT, prints "peer ADDRESS" (getpeername) and "local ADDRESS"
 * (getsockname), then GETs /whoami on the same connection: "status 200", "body CLIENT".
 * In the pod the peer is WEB_IP:WEB_PORT and the local address a pod address; a relay on
 * 127.0.0.1 must never show through either.
 */
#include "common.h"

int main(void)
{
	int fd = connect_tcp4(WEB_IP, WEB_PORT);
	if (fd < 0)
		return 1;
	print_name("peer", fd, 1);
	print_name("local", fd, 0);
	return print_get(fd, "/whoami") ? 1 : 0;
}

/*
 * thread_connect: socket() on one thread, connect() on another, the request on a third.
 *
 * A supervisor that keys its connect state by thread (or that only knows the socket's
 * creator) loses track here; threads share one fd table, so the connect must divert all the
 * same. Prints "connect 0", "status 200", "body hello from web", then "peer" and "whoami".
 */
#include <pthread.h>

#include "common.h"

static int fd = -1;
static int connect_rc = -1;

static void *make_socket(void *arg)
{
	(void)arg;
	fd = socket(AF_INET, SOCK_STREAM, 0);
	return NULL;
}

static void *do_connect(void *arg)
{
	(void)arg;
	struct sockaddr_in sin = inet4(WEB_IP, WEB_PORT);
	connect_rc = connect(fd, (struct sockaddr *)&sin, sizeof sin);
	say("connect %d%s%s\n", connect_rc, connect_rc ? " " : "",
	    connect_rc ? errname(errno) : "");
	return NULL;
}

int main(void)
{
	pthread_t t;
	if (pthread_create(&t, NULL, make_socket, NULL) || pthread_join(t, NULL))
		die("pthread");
	if (fd < 0)
		die("socket");
	if (pthread_create(&t, NULL, do_connect, NULL) || pthread_join(t, NULL))
		die("pthread");
	if (connect_rc != 0)
		return 1;
	print_name("peer", fd, 1);
	int rc = print_get(fd, "/hello");
	close(fd);
	/* And where the web server saw the connection come from. */
	int who = connect_tcp4(WEB_IP, WEB_PORT);
	if (who < 0)
		return 1;
	char *body = NULL;
	size_t len;
	if (http_get(who, "/whoami", &body, &len) != 200)
		return 1;
	say("whoami %s", body);
	return rc ? 1 : 0;
}

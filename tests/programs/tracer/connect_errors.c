/*
 * connect_errors: non-blocking connects and the errnos of failing connects.
 *
 *   connect_errors nb-ok          non-blocking connect to WEB_IP:WEB_PORT; "connect
 *                                 EINPROGRESS" (or 0), epoll for EPOLLOUT, "so_error 0",
 *                                 then GET /hello on it: "status 200", "body ..."
 *   connect_errors nb-fail IP PORT
 *                                 non-blocking connect; "connect_ms N" (how long the call
 *                                 itself took, for people), "result ERRNO" with "how
 *                                 immediate" or "how so_error" (after EPOLLOUT)
 *   connect_errors block IP PORT  blocking connect; "connect 0" or "connect -1 ERRNO",
 *                                 then "elapsed_ms N" (printed for people, not asserted)
 *   connect_errors sndtimeo IP PORT MS
 *                                 blocking connect with SO_SNDTIMEO = MS: when the time is
 *                                 up Linux gives up waiting with EINPROGRESS (the handshake
 *                                 goes on in the background); "connect ..." and "elapsed_ms"
 */
#include <fcntl.h>
#include <sys/epoll.h>

#include "common.h"

/* Wait for EPOLLOUT; returns the events seen (0 on timeout). */
static unsigned wait_writable(int fd, int timeout_ms)
{
	int ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0)
		die("epoll_create1");
	struct epoll_event ev = {.events = EPOLLOUT, .data.fd = fd};
	if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
		die("epoll_ctl");
	struct epoll_event out;
	int n;
	do {
		n = epoll_wait(ep, &out, 1, timeout_ms);
	} while (n < 0 && errno == EINTR);
	close(ep);
	return n == 1 ? out.events : 0;
}

static int so_error(int fd)
{
	int err = -1;
	socklen_t len = sizeof err;
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		die("getsockopt");
	return err;
}

static int nonblocking_socket(void)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	if (fd < 0)
		die("socket");
	return fd;
}

static int nb_ok(void)
{
	struct sockaddr_in sin = inet4(WEB_IP, WEB_PORT);
	int fd = nonblocking_socket();
	int rc = connect(fd, (struct sockaddr *)&sin, sizeof sin);
	say("connect %s\n", rc == 0 ? "0" : errname(errno));
	if (rc < 0 && errno != EINPROGRESS)
		return 1;
	unsigned ev = wait_writable(fd, 10000);
	say("epollout %d\n", (ev & EPOLLOUT) ? 1 : 0);
	int err = so_error(fd);
	say("so_error %s\n", errname(err));
	if (err)
		return 1;
	print_name("peer", fd, 1);
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
	return print_get(fd, "/hello") ? 1 : 0;
}

static int nb_fail(const char *ip, int port)
{
	struct sockaddr_in sin = inet4(ip, port);
	int fd = nonblocking_socket();
	double t0 = now_ms();
	int rc = connect(fd, (struct sockaddr *)&sin, sizeof sin);
	int err = errno;
	say("connect_ms %.0f\n", now_ms() - t0);
	errno = err;
	if (rc == 0) {
		say("result 0\nhow immediate\n");
		return 0;
	}
	if (errno != EINPROGRESS) {
		say("result %s\nhow immediate\n", errname(errno));
		return 0;
	}
	unsigned ev = wait_writable(fd, 10000);
	say("events%s%s%s\n", (ev & EPOLLOUT) ? " OUT" : "", (ev & EPOLLERR) ? " ERR" : "",
	    (ev & EPOLLHUP) ? " HUP" : "");
	say("result %s\nhow so_error\n", errname(so_error(fd)));
	return 0;
}

static int sndtimeo(const char *ip, int port, int ms)
{
	struct sockaddr_in sin = inet4(ip, port);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) < 0)
		die("setsockopt");
	double t0 = now_ms();
	int rc = connect(fd, (struct sockaddr *)&sin, sizeof sin);
	say("connect %s\nelapsed_ms %.0f\n", rc == 0 ? "0" : errname(errno), now_ms() - t0);
	return 0;
}

static int block(const char *ip, int port)
{
	double t0 = now_ms();
	int fd = connect_tcp4(ip, port);
	say("elapsed_ms %.0f\n", now_ms() - t0);
	if (fd >= 0)
		close(fd);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 2 && !strcmp(argv[1], "nb-ok"))
		return nb_ok();
	if (argc == 4 && !strcmp(argv[1], "nb-fail"))
		return nb_fail(argv[2], atoi(argv[3]));
	if (argc == 4 && !strcmp(argv[1], "block"))
		return block(argv[2], atoi(argv[3]));
	if (argc == 5 && !strcmp(argv[1], "sndtimeo"))
		return sndtimeo(argv[2], atoi(argv[3]), atoi(argv[4]));
	fprintf(stderr, "usage: %s nb-ok | nb-fail IP PORT | block IP PORT | sndtimeo IP PORT MS\n",
		argv[0]);
	return 2;
}

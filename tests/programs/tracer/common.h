/*
 * common.h: small helpers shared by the tracer-bug test programs.
 *
 * Every program prints machine-checkable "key value" lines on stdout (flushed at once, so
 * a test reading a pipe sees them as they happen) and exits 0 when what it did went the way
 * Linux would have it go. The addresses of the simulated cluster come from mt_cluster.h,
 * which tests/integration/tracer_programs.py writes from the constants in cluster.py.
 *
 * Errno values are printed by name (errname), so a test asserts "ECONNREFUSED" and not a
 * number, and the same table works with glibc and musl (no strerrorname_np in musl).
 */
#ifndef MT_COMMON_H
#define MT_COMMON_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "mt_cluster.h"

#define MT_UNUSED __attribute__((unused))

/* The errno name, for the errnos these programs can meet. */
static MT_UNUSED const char *errname(int e)
{
	switch (e) {
	case 0: return "0";
	case EPERM: return "EPERM";
	case ENOENT: return "ENOENT";
	case EINTR: return "EINTR";
	case EIO: return "EIO";
	case EBADF: return "EBADF";
	case EAGAIN: return "EAGAIN";
	case ENOMEM: return "ENOMEM";
	case EACCES: return "EACCES";
	case EFAULT: return "EFAULT";
	case EINVAL: return "EINVAL";
	case ENOSYS: return "ENOSYS";
	case ENOTSOCK: return "ENOTSOCK";
	case EAFNOSUPPORT: return "EAFNOSUPPORT";
	case EADDRINUSE: return "EADDRINUSE";
	case EADDRNOTAVAIL: return "EADDRNOTAVAIL";
	case ENETUNREACH: return "ENETUNREACH";
	case ECONNABORTED: return "ECONNABORTED";
	case ECONNRESET: return "ECONNRESET";
	case EISCONN: return "EISCONN";
	case ENOTCONN: return "ENOTCONN";
	case ETIMEDOUT: return "ETIMEDOUT";
	case ECONNREFUSED: return "ECONNREFUSED";
	case EHOSTUNREACH: return "EHOSTUNREACH";
	case EALREADY: return "EALREADY";
	case EINPROGRESS: return "EINPROGRESS";
	default: {
		static __thread char buf[32];
		snprintf(buf, sizeof buf, "E%d", e);
		return buf;
	}
	}
}

/* printf + fflush: the tests read our stdout through a pipe while we run. */
static MT_UNUSED void say(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	fflush(stdout);
}

static MT_UNUSED void die(const char *what)
{
	say("fatal %s %s\n", what, errname(errno));
	exit(99);
}

static MT_UNUSED double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static MT_UNUSED struct sockaddr_in inet4(const char *ip, int port)
{
	struct sockaddr_in sin;
	memset(&sin, 0, sizeof sin);
	sin.sin_family = AF_INET;
	sin.sin_port = htons((unsigned short)port);
	if (inet_pton(AF_INET, ip, &sin.sin_addr) != 1) {
		fprintf(stderr, "bad IPv4 address %s\n", ip);
		exit(98);
	}
	return sin;
}

static MT_UNUSED struct sockaddr_in6 inet6(const char *ip, int port)
{
	struct sockaddr_in6 sin6;
	memset(&sin6, 0, sizeof sin6);
	sin6.sin6_family = AF_INET6;
	sin6.sin6_port = htons((unsigned short)port);
	if (inet_pton(AF_INET6, ip, &sin6.sin6_addr) != 1) {
		fprintf(stderr, "bad IPv6 address %s\n", ip);
		exit(98);
	}
	return sin6;
}

/* "198.18.0.10:8080" or "[2001:2::10]:8080" (or "family N") into buf. */
static MT_UNUSED const char *fmt_sockaddr(const void *sa, char *buf, size_t len)
{
	const struct sockaddr *s = sa;
	char host[INET6_ADDRSTRLEN];
	if (s->sa_family == AF_INET) {
		const struct sockaddr_in *in = sa;
		inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
		snprintf(buf, len, "%s:%d", host, ntohs(in->sin_port));
	} else if (s->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = sa;
		inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
		snprintf(buf, len, "[%s]:%d", host, ntohs(in6->sin6_port));
	} else {
		snprintf(buf, len, "family %d", s->sa_family);
	}
	return buf;
}

/* Print "<key> ADDRESS" for getpeername or getsockname of fd ("<key> -1 ERRNO" on error). */
static MT_UNUSED void print_name(const char *key, int fd, int peer)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof ss;
	char buf[128];
	memset(&ss, 0, sizeof ss);
	int rc = peer ? getpeername(fd, (struct sockaddr *)&ss, &len)
		      : getsockname(fd, (struct sockaddr *)&ss, &len);
	if (rc < 0)
		say("%s -1 %s\n", key, errname(errno));
	else
		say("%s %s\n", key, fmt_sockaddr(&ss, buf, sizeof buf));
}

static MT_UNUSED int write_all(int fd, const void *data, size_t len)
{
	const char *p = data;
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/*
 * Send "GET path HTTP/1.0" on a connected socket and read the answer to EOF.
 * Returns the HTTP status (or -1 with errno set); *body (malloc'd, NUL-terminated) and
 * *body_len get the body.
 */
static MT_UNUSED int http_get(int fd, const char *path, char **body, size_t *body_len)
{
	char req[512];
	int n = snprintf(req, sizeof req,
			 "GET %s HTTP/1.0\r\nHost: web\r\nConnection: close\r\n\r\n", path);
	if (write_all(fd, req, (size_t)n) < 0)
		return -1;
	size_t cap = 4096, len = 0;
	char *buf = malloc(cap + 1);
	if (!buf)
		return -1;
	for (;;) {
		if (len == cap) {
			cap *= 2;
			char *bigger = realloc(buf, cap + 1);
			if (!bigger) {
				free(buf);
				return -1;
			}
			buf = bigger;
		}
		ssize_t got = read(fd, buf + len, cap - len);
		if (got < 0) {
			if (errno == EINTR)
				continue;
			free(buf);
			return -1;
		}
		if (got == 0)
			break;
		len += (size_t)got;
	}
	buf[len] = 0;
	char *end = strstr(buf, "\r\n\r\n");
	int status = 0;
	if (!end || sscanf(buf, "HTTP/%*s %d", &status) != 1) {
		free(buf);
		errno = EIO;
		return -1;
	}
	end += 4;
	*body_len = len - (size_t)(end - buf);
	memmove(buf, end, *body_len + 1);
	*body = buf;
	return status;
}

/* GET path on fd and print "status N" then "body <body>" (the body keeps its newline). */
static MT_UNUSED int print_get(int fd, const char *path)
{
	char *body = NULL;
	size_t len = 0;
	int status = http_get(fd, path, &body, &len);
	if (status < 0) {
		say("http -1 %s\n", errname(errno));
		return -1;
	}
	say("status %d\nbody %s", status, body);
	free(body);
	return status == 200 ? 0 : -1;
}

/* A blocking TCP connect to ip:port; prints "connect 0" or "connect -1 ERRNO". */
static MT_UNUSED int connect_tcp4(const char *ip, int port)
{
	struct sockaddr_in sin = inet4(ip, port);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0)
		die("socket");
	if (connect(fd, (struct sockaddr *)&sin, sizeof sin) < 0) {
		say("connect -1 %s\n", errname(errno));
		close(fd);
		return -1;
	}
	say("connect 0\n");
	return fd;
}

/* 64-bit FNV-1a: the tests recompute it over the bytes the web server sends. */
static MT_UNUSED unsigned long long fnv1a(const void *data, size_t len)
{
	const unsigned char *p = data;
	unsigned long long h = 0xcbf29ce484222325ULL;
	for (size_t i = 0; i < len; i++) {
		h ^= p[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

/* The pid tracing us (0 when none): proves a process is (still) under the supervisor. */
static MT_UNUSED int tracer_pid(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	int pid = -1;
	while (f && fgets(line, sizeof line, f))
		if (sscanf(line, "TracerPid: %d", &pid) == 1)
			break;
	if (f)
		fclose(f);
	return pid;
}

#endif

/* http_latency: ITERS x (new TCP connection + GET PATH + read to EOF), each timed.
 *
 * Every iteration opens a fresh socket, connects to HOST:PORT (numeric IPv4), sends
 * "GET PATH HTTP/1.1" with "Connection: close", reads until the server closes, and
 * checks the status line is 200 and the body contains EXPECT. The latency of each
 * iteration (socket() to close(), CLOCK_MONOTONIC) is printed in nanoseconds, one
 * per line after a "latencies_ns" header; WARMUP extra iterations run first and are
 * not printed. Exit status 0 only if every iteration succeeded.
 *
 * usage: http_latency HOST PORT PATH EXPECT ITERS [WARMUP]
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int one(const struct sockaddr_in *sa, const char *req, size_t reqlen,
               const char *expect) {
    char buf[4096];
    size_t have = 0;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        perror("socket");
        return -1;
    }
    if (connect(fd, (const struct sockaddr *)sa, sizeof *sa) != 0) {
        perror("connect");
        close(fd);
        return -1;
    }
    size_t off = 0;
    while (off < reqlen) {
        ssize_t w = write(fd, req + off, reqlen - off);
        if (w < 0) {
            if (errno == EINTR) continue;
            perror("write");
            close(fd);
            return -1;
        }
        off += (size_t)w;
    }
    for (;;) {
        if (have == sizeof buf - 1) {
            fprintf(stderr, "response too long\n");
            close(fd);
            return -1;
        }
        ssize_t r = read(fd, buf + have, sizeof buf - 1 - have);
        if (r < 0) {
            if (errno == EINTR) continue;
            perror("read");
            close(fd);
            return -1;
        }
        if (r == 0) break;
        have += (size_t)r;
    }
    close(fd);
    buf[have] = 0;
    if (strncmp(buf, "HTTP/1.1 200", 12) != 0 && strncmp(buf, "HTTP/1.0 200", 12) != 0) {
        fprintf(stderr, "bad response: %.80s\n", buf);
        return -1;
    }
    if (strstr(buf, expect) == NULL) {
        fprintf(stderr, "response lacks %s: %.200s\n", expect, buf);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: %s HOST PORT PATH EXPECT ITERS [WARMUP]\n", argv[0]);
        return 2;
    }
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &sa.sin_addr) != 1) {
        fprintf(stderr, "bad address %s\n", argv[1]);
        return 2;
    }
    long iters = strtol(argv[5], NULL, 10);
    long warmup = argc > 6 ? strtol(argv[6], NULL, 10) : 0;
    char req[512];
    int reqlen = snprintf(req, sizeof req,
                          "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n",
                          argv[3], argv[1]);
    long long *lat = calloc((size_t)iters, sizeof *lat);
    if (lat == NULL) return 1;
    for (long i = 0; i < warmup; i++)
        if (one(&sa, req, (size_t)reqlen, argv[4]) != 0) return 1;
    for (long i = 0; i < iters; i++) {
        long long t0 = now_ns();
        if (one(&sa, req, (size_t)reqlen, argv[4]) != 0) {
            fprintf(stderr, "iteration %ld failed\n", i);
            return 1;
        }
        lat[i] = now_ns() - t0;
    }
    printf("latencies_ns %ld\n", iters);
    for (long i = 0; i < iters; i++) printf("%lld\n", lat[i]);
    return 0;
}

/* blast_server: a raw TCP source for throughput benches (runs in the pod).
 *
 * Listens on HOST:PORT, prints "ready" once listening, then serves connections one after
 * another: the client sends an 8-byte little-endian byte count N (a multiple of 8), the
 * server sends N bytes of a checkable stream and closes. The stream is 64-bit little-endian
 * words, word i = i ^ 0x9e3779b97f4a7c15, so a relay that drops, repeats or reorders bytes is
 * caught by blast_client without hashing. Runs until killed.
 *
 * usage: blast_server HOST PORT
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAGIC 0x9e3779b97f4a7c15ULL
#define BUF (1u << 20)

static uint64_t words[BUF / 8];

static int read_full(int fd, void *p, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)p + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        got += (size_t)r;
    }
    return 0;
}

static void serve(int fd) {
    uint64_t n;
    if (read_full(fd, &n, sizeof n) != 0 || n % 8 != 0) return;
    uint64_t word = 0, sent = 0;
    while (sent < n) {
        uint64_t chunk = n - sent < BUF ? n - sent : BUF;
        for (uint64_t k = 0; k < chunk / 8; k++) words[k] = (word + k) ^ MAGIC;
        word += chunk / 8;
        const char *p = (const char *)words;
        uint64_t off = 0;
        while (off < chunk) {
            ssize_t w = write(fd, p + off, chunk - off);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) return; /* client went away */
            off += (uint64_t)w;
        }
        sent += chunk;
    }
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s HOST PORT\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &sa.sin_addr) != 1) {
        fprintf(stderr, "bad address %s\n", argv[1]);
        return 2;
    }
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ls < 0 || bind(ls, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(ls, 16) != 0) {
        perror("listen");
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        int fd = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR) continue;
            perror("accept");
            return 1;
        }
        serve(fd);
        close(fd);
    }
}

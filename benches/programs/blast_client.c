/* blast_client: read N bytes from blast_server, check them, and time it.
 *
 * Connects to HOST:PORT (numeric IPv4), asks for N bytes (N a multiple of 8), reads until
 * EOF into a 1 MiB buffer and checks every 64-bit word against blast_server's stream. The
 * clock (CLOCK_MONOTONIC) starts just before connect() and stops when the N-th byte has
 * arrived, not at EOF: a relay may take its time to pass the close on (socat lingers 0.5 s
 * per hop by default, its -t), and that is not throughput. EOF must still follow, with no
 * byte more. Prints one line:
 *     bytes=N seconds=S mb_per_s=R
 * (MB = 10^6 bytes) and exits 0, or says what was wrong and exits 1.
 *
 * usage: blast_client HOST PORT N
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAGIC 0x9e3779b97f4a7c15ULL
#define BUF (1u << 20)

static unsigned char buf[BUF + 8];

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s HOST PORT N\n", argv[0]);
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
    uint64_t n = strtoull(argv[3], NULL, 10);
    if (n % 8 != 0) {
        fprintf(stderr, "N must be a multiple of 8\n");
        return 2;
    }
    double t0 = now_s();
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        perror("connect");
        return 1;
    }
    if (write(fd, &n, sizeof n) != (ssize_t)sizeof n) {
        perror("write");
        return 1;
    }
    double t1 = n == 0 ? now_s() : 0;
    uint64_t total = 0, word = 0;
    size_t carry = 0; /* bytes of an incomplete word kept at the front of buf */
    for (;;) {
        ssize_t r = read(fd, buf + carry, BUF);
        if (r < 0) {
            if (errno == EINTR) continue;
            perror("read");
            return 1;
        }
        if (r == 0) break;
        total += (uint64_t)r;
        if (total >= n && t1 == 0) t1 = now_s();
        size_t have = carry + (size_t)r;
        size_t whole = have / 8;
        for (size_t k = 0; k < whole; k++) {
            uint64_t w;
            memcpy(&w, buf + 8 * k, 8);
            if (w != ((word + k) ^ MAGIC)) {
                fprintf(stderr, "wrong bytes: word %llu (offset %llu) is %016llx\n",
                        (unsigned long long)(word + k), (unsigned long long)(8 * (word + k)),
                        (unsigned long long)w);
                return 1;
            }
        }
        word += whole;
        carry = have - whole * 8;
        memmove(buf, buf + whole * 8, carry);
    }
    close(fd);
    if (total != n || carry != 0) {
        fprintf(stderr, "short or long stream: got %llu bytes of %llu\n",
                (unsigned long long)total, (unsigned long long)n);
        return 1;
    }
    printf("bytes=%llu seconds=%.6f mb_per_s=%.1f\n", (unsigned long long)n, t1 - t0,
           (double)n / (t1 - t0) / 1e6);
    return 0;
}

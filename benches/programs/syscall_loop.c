/* syscall_loop: N small syscalls that mirrortrace never diverts.
 *
 * N/2 x read(1 byte) from /dev/zero interleaved with N/2 x write(1 byte) to /dev/null.
 * The loop times itself and prints one line:
 *     calls=N loop_ns=T cpu_ns=C
 * T from CLOCK_MONOTONIC (wall time of the loop), C from CLOCK_PROCESS_CPUTIME_ID (CPU the
 * process spent in it, user + kernel: less disturbed by other load on a shared machine), so
 * a bench can compare the per-syscall cost without the supervisor's fixed start-up.
 *
 * usage: syscall_loop [N]      (default 1000000)
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? strtol(argv[1], NULL, 10) : 1000000;
    int zero = open("/dev/zero", O_RDONLY | O_CLOEXEC);
    int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (zero < 0 || null < 0) {
        perror("open");
        return 1;
    }
    char c = 0;
    long pairs = n / 2;
    long long c0 = now_ns(CLOCK_PROCESS_CPUTIME_ID);
    long long t0 = now_ns(CLOCK_MONOTONIC);
    for (long i = 0; i < pairs; i++) {
        if (read(zero, &c, 1) != 1 || write(null, &c, 1) != 1) {
            perror("read/write");
            return 1;
        }
    }
    long long t1 = now_ns(CLOCK_MONOTONIC);
    long long c1 = now_ns(CLOCK_PROCESS_CPUTIME_ID);
    printf("calls=%ld loop_ns=%lld cpu_ns=%lld\n", pairs * 2, t1 - t0, c1 - c0);
    return 0;
}

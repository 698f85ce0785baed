/* seccomp_allow: run a command under a one-instruction seccomp filter that allows everything.
 *
 * No tracer, no trapped syscall: what is left is the cost the kernel adds to EVERY syscall
 * of a process that has any seccomp filter (the syscall-entry slow path and one BPF run).
 * mirrortrace's untouched syscalls cannot be cheaper than this, so the bench shows it as
 * the floor beside the untraced and traced runs.
 *
 * usage: seccomp_allow COMMAND [ARGS...]
 */
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s COMMAND [ARGS...]\n", argv[0]);
        return 2;
    }
    struct sock_filter allow[] = {BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)};
    struct sock_fprog prog = {.len = 1, .filter = allow};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
        prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
        perror("seccomp");
        return 1;
    }
    execvp(argv[1], argv + 1);
    perror(argv[1]);
    return 127;
}

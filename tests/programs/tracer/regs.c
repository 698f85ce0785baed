/*
 * regs: raw `syscall` instructions with sentinels in every register the ABI preserves.
 *
 * The x86_64 syscall ABI clobbers only rax (the result), rcx and r11. A supervisor that
 * rewrites an argument register (a path moved to scratch memory, a sockaddr naming the
 * relay) or injects a syscall of its own (the scratch mmap) must put every register back;
 * compiled code relies on that, with no way to notice otherwise. Unused argument registers
 * and callee-saved registers hold distinct sentinels; used ones hold their real values;
 * all are checked after the instruction.
 *
 * Three calls, in this order (the first is the first trapped syscall in a static build, so
 * it also goes through the tracer's scratch-mmap injection):
 *   connect   to WEB_IP:WEB_PORT, then GET /hello on it   -> "connect 0", "status", "body"
 *   openat    of /etc/resolv.conf (diverted to the pod's) -> "openat_nameserver IP"
 *   sendto    of a DNS query to DNS_IP:53, answer read    -> "sendto N", "answer IP"
 * and for each, "NAME regs ok" or one "NAME reg REG want X got Y" line per damaged register.
 */
#include <fcntl.h>
#include <poll.h>
#include <sys/syscall.h>

#include "common.h"
#include "dns.h"

enum { RDI, RSI, RDX, R10, R8, R9, RBX, R12, R13, R14, R15, NREGS };
static const char *const reg_names[NREGS] = {
	"rdi", "rsi", "rdx", "r10", "r8", "r9", "rbx", "r12", "r13", "r14", "r15",
};

static long raw_syscall(long nr, const unsigned long in[NREGS], unsigned long out[NREGS])
{
	register unsigned long rdi __asm__("rdi") = in[RDI];
	register unsigned long rsi __asm__("rsi") = in[RSI];
	register unsigned long rdx __asm__("rdx") = in[RDX];
	register unsigned long r10 __asm__("r10") = in[R10];
	register unsigned long r8 __asm__("r8") = in[R8];
	register unsigned long r9 __asm__("r9") = in[R9];
	register unsigned long r12 __asm__("r12") = in[R12];
	register unsigned long r13 __asm__("r13") = in[R13];
	register unsigned long r14 __asm__("r14") = in[R14];
	register unsigned long r15 __asm__("r15") = in[R15];
	unsigned long rbx = in[RBX];
	long rax = nr;
	/* "+r" on register variables: the compiler reads each register back afterwards. */
	__asm__ volatile("syscall"
			 : "+a"(rax), "+r"(rdi), "+r"(rsi), "+r"(rdx), "+r"(r10), "+r"(r8),
			   "+r"(r9), "+b"(rbx), "+r"(r12), "+r"(r13), "+r"(r14), "+r"(r15)
			 :
			 : "rcx", "r11", "memory");
	out[RDI] = rdi;
	out[RSI] = rsi;
	out[RDX] = rdx;
	out[R10] = r10;
	out[R8] = r8;
	out[R9] = r9;
	out[RBX] = rbx;
	out[R12] = r12;
	out[R13] = r13;
	out[R14] = r14;
	out[R15] = r15;
	return rax;
}

/* Fill every register from `used` onwards with a sentinel unlike any real argument. */
static void sentinels(unsigned long in[NREGS], int used)
{
	for (int i = used; i < NREGS; i++)
		in[i] = 0x5a5a000000000000UL | ((unsigned long)(i + 1) << 40) | 0x1234567UL;
}

static long checked(const char *name, long nr, unsigned long in[NREGS])
{
	unsigned long out[NREGS];
	long rc = raw_syscall(nr, in, out);
	int bad = 0;
	for (int i = 0; i < NREGS; i++) {
		if (in[i] != out[i]) {
			say("%s reg %s want %#lx got %#lx\n", name, reg_names[i], in[i], out[i]);
			bad = 1;
		}
	}
	if (!bad)
		say("%s regs ok\n", name);
	return rc;
}

int main(void)
{
	unsigned long in[NREGS];

	struct sockaddr_in web = inet4(WEB_IP, WEB_PORT);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0)
		die("socket");
	in[RDI] = (unsigned long)fd;
	in[RSI] = (unsigned long)&web;
	in[RDX] = sizeof web;
	sentinels(in, R10);
	long rc = checked("connect", SYS_connect, in);
	say("connect %s\n", rc == 0 ? "0" : errname((int)-rc));
	if (rc == 0)
		print_get(fd, "/hello");
	close(fd);

	static const char path[] = "/etc/resolv.conf";
	in[RDI] = (unsigned long)(long)AT_FDCWD;
	in[RSI] = (unsigned long)path;
	in[RDX] = O_RDONLY | O_CLOEXEC;
	sentinels(in, R10); /* r10 is the mode: ignored without O_CREAT */
	rc = checked("openat", SYS_openat, in);
	if (rc < 0) {
		say("openat -1 %s\n", errname((int)-rc));
	} else {
		char buf[4096], ip[64] = "none";
		ssize_t n = read((int)rc, buf, sizeof buf - 1);
		buf[n > 0 ? n : 0] = 0;
		char *ns = strstr(buf, "nameserver");
		if (ns)
			sscanf(ns, "nameserver %63s", ip);
		say("openat_nameserver %s\n", ip);
		close((int)rc);
	}

	unsigned char q[512], r[1500];
	unsigned short id = 0x4242;
	int qlen = build_query(q, id);
	struct sockaddr_in dns = inet4(DNS_IP, 53);
	int ufd = socket(AF_INET, SOCK_DGRAM, 0);
	if (ufd < 0)
		die("socket");
	in[RDI] = (unsigned long)ufd;
	in[RSI] = (unsigned long)q;
	in[RDX] = (unsigned long)qlen;
	in[R10] = 0;
	in[R8] = (unsigned long)&dns;
	in[R9] = sizeof dns;
	sentinels(in, RBX);
	rc = checked("sendto", SYS_sendto, in);
	say("sendto %s\n", rc >= 0 ? (rc == qlen ? "all" : "short") : errname((int)-rc));
	if (rc == qlen) {
		struct pollfd pfd = {.fd = ufd, .events = POLLIN};
		if (poll(&pfd, 1, 10000) == 1) {
			ssize_t n = recv(ufd, r, sizeof r, 0);
			if (n > 0)
				print_answer(r, (int)n, id);
		} else {
			say("sendto no answer\n");
		}
	}
	return 0;
}

/*
 * rodata: the program's own sockaddr and path buffers are never changed, even read-only ones.
 *
 * A `static const struct sockaddr_in` (in .rodata) is used for connect(), and a `static
 * const char[]` "/etc/resolv.conf" (in .rodata too) is opened. /proc/PID/mem writes succeed
 * on read-only pages (FOLL_FORCE), so a supervisor that patched the program's own buffer to
 * point it elsewhere would not even get an error: it would silently change program
 * constants. Copies taken before the calls are compared after them.
 *
 * Prints "sockaddr_perms PERMS" and "path_perms PERMS" (the mapping's, from
 * /proc/self/maps), "connect 0", "status"/"body", "resolv_nameserver IP" (the first
 * nameserver line read from the opened file), "sockaddr_unchanged 1", "path_unchanged 1".
 */
#include <fcntl.h>

#include "common.h"

#define MT_BE16(p) ((unsigned short)((((p) >> 8) & 0xff) | (((p) & 0xff) << 8)))
#define MT_BE32(a, b, c, d)                                                          \
	((unsigned)(a) | ((unsigned)(b) << 8) | ((unsigned)(c) << 16) | ((unsigned)(d) << 24))
#define MT_BE32_(...) MT_BE32(__VA_ARGS__)

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the constants below are laid out for a little-endian machine"
#endif

static const struct sockaddr_in WEB_SA = {
	.sin_family = AF_INET,
	.sin_port = MT_BE16(WEB_PORT),
	.sin_addr = {.s_addr = MT_BE32_(WEB_IP_OCTETS)},
};
static const char RESOLV_PATH[] = "/etc/resolv.conf";

/* The permissions of the mapping that holds addr, e.g. "r--p". */
static void print_perms(const char *key, const void *addr)
{
	FILE *maps = fopen("/proc/self/maps", "r");
	char line[512];
	unsigned long want = (unsigned long)addr;
	while (maps && fgets(line, sizeof line, maps)) {
		unsigned long lo, hi;
		char perms[8];
		if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) == 3 && lo <= want && want < hi) {
			say("%s %s\n", key, perms);
			fclose(maps);
			return;
		}
	}
	say("%s unknown\n", key);
	if (maps)
		fclose(maps);
}

int main(void)
{
	struct sockaddr_in sa_copy;
	char path_copy[sizeof RESOLV_PATH];
	memcpy(&sa_copy, &WEB_SA, sizeof sa_copy);
	memcpy(path_copy, RESOLV_PATH, sizeof path_copy);
	print_perms("sockaddr_perms", &WEB_SA);
	print_perms("path_perms", RESOLV_PATH);

	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0)
		die("socket");
	if (connect(fd, (const struct sockaddr *)&WEB_SA, sizeof WEB_SA) < 0) {
		say("connect -1 %s\n", errname(errno));
	} else {
		say("connect 0\n");
		print_get(fd, "/hello");
	}
	close(fd);

	int rfd = open(RESOLV_PATH, O_RDONLY | O_CLOEXEC);
	if (rfd < 0) {
		say("open -1 %s\n", errname(errno));
	} else {
		char buf[4096];
		ssize_t n = read(rfd, buf, sizeof buf - 1);
		buf[n > 0 ? n : 0] = 0;
		close(rfd);
		char *ns = strstr(buf, "nameserver");
		char ip[64] = "none";
		if (ns)
			sscanf(ns, "nameserver %63s", ip);
		say("resolv_nameserver %s\n", ip);
	}
	say("sockaddr_unchanged %d\n", !memcmp(&sa_copy, &WEB_SA, sizeof sa_copy));
	say("path_unchanged %d\n", !memcmp(path_copy, RESOLV_PATH, sizeof path_copy));
	return 0;
}

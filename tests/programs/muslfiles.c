/*
 * muslfiles: a statically linked musl test program for mirrortrace's file access.
 *
 * Static musl reaches files through syscalls glibc and Go no longer use on x86_64: open
 * (not openat), stat and lstat (not newfstatat), readv for fread and getdents64 for
 * readdir, with no dynamic libc an LD_PRELOAD tool could hook (checked with strace against
 * musl 1.2.3). It checks that such a program sees remote files byte for byte.
 *
 * Usage:
 *   muslfiles cat PATH         fopen/fread, copied to stdout unchanged (binary-safe)
 *   muslfiles stat PATH        stat(): "SIZE PERM KIND", PERM the octal permission bits
 *                              (e.g. 644), KIND dir, file, link or other
 *   muslfiles lstat PATH       the same with lstat()
 *   muslfiles ls DIR           opendir/readdir: the names but . and .., sorted, one a line
 *   muslfiles write PATH TEXT  fopen "w", fputs TEXT, fclose; prints nothing
 * Exit 0 on success. On failure, one line on stderr and exit 1:
 *   "<call>: <strerror(errno)>", e.g. "fopen: No such file or directory"; exit 2 on bad usage.
 *
 * Build: musl-gcc -static -O2 -o muslfiles muslfiles.c
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>

static int fail(const char *call)
{
	fprintf(stderr, "%s: %s\n", call, strerror(errno));
	return 1;
}

static int cat(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return fail("fopen");
	char buf[1 << 16];
	size_t n;
	while ((n = fread(buf, 1, sizeof buf, f)) > 0) {
		if (fwrite(buf, 1, n, stdout) != n)
			return fail("fwrite");
	}
	/* fread returns 0 at end of file and on error alike: ferror tells them apart
	 * (a directory opens fine and fails here, with EISDIR). */
	if (ferror(f))
		return fail("fread");
	fclose(f);
	if (fflush(stdout) != 0)
		return fail("fwrite");
	return 0;
}

static const char *kind(mode_t mode)
{
	if (S_ISDIR(mode))
		return "dir";
	if (S_ISREG(mode))
		return "file";
	if (S_ISLNK(mode))
		return "link";
	return "other";
}

static int do_stat(const char *path, int follow)
{
	struct stat st;
	if ((follow ? stat(path, &st) : lstat(path, &st)) != 0)
		return fail(follow ? "stat" : "lstat");
	/* Permission bits only, as Go's FileMode.Perm, so both programs print the same. */
	printf("%lld %o %s\n", (long long)st.st_size, (unsigned)(st.st_mode & 0777), kind(st.st_mode));
	return 0;
}

static int by_name(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int ls(const char *dir)
{
	DIR *d = opendir(dir);
	if (!d)
		return fail("opendir");
	size_t cap = 64, used = 0;
	char **names = malloc(cap * sizeof *names);
	if (!names)
		return fail("malloc");
	for (;;) {
		/* readdir returns NULL at the end and on error: only errno tells them apart. */
		errno = 0;
		struct dirent *e = readdir(d);
		if (!e) {
			if (errno != 0)
				return fail("readdir");
			break;
		}
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		if (used == cap) {
			cap *= 2;
			names = realloc(names, cap * sizeof *names);
			if (!names)
				return fail("realloc");
		}
		if (!(names[used++] = strdup(e->d_name)))
			return fail("strdup");
	}
	closedir(d);
	qsort(names, used, sizeof *names, by_name);
	for (size_t i = 0; i < used; i++)
		puts(names[i]);
	if (fflush(stdout) != 0)
		return fail("fwrite");
	return 0;
}

static int write_text(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	if (!f)
		return fail("fopen");
	if (fputs(text, f) == EOF)
		return fail("fputs");
	/* A full disk or a remote error may only show when the buffer is flushed here. */
	if (fclose(f) != 0)
		return fail("fclose");
	return 0;
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "";
	if (argc == 3 && strcmp(mode, "cat") == 0)
		return cat(argv[2]);
	if (argc == 3 && strcmp(mode, "stat") == 0)
		return do_stat(argv[2], 1);
	if (argc == 3 && strcmp(mode, "lstat") == 0)
		return do_stat(argv[2], 0);
	if (argc == 3 && strcmp(mode, "ls") == 0)
		return ls(argv[2]);
	if (argc == 4 && strcmp(mode, "write") == 0)
		return write_text(argv[2], argv[3]);
	fprintf(stderr, "usage: %s cat PATH | stat PATH | lstat PATH | ls DIR | write PATH TEXT\n",
		argv[0]);
	return 2;
}

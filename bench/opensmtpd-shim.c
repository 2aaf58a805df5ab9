/*
 * LD_PRELOAD shim for the benchmark's OpenSMTPD (bench/opensmtpd-instance.sh): two settings
 * OpenSMTPD has no configuration for, read from the environment at each call.
 *
 * SHIM_BACKLOG=N: listen() with a backlog of at least N. OpenSMTPD listens with a
 * compiled-in backlog of 5 (SMTPD_BACKLOG); with 20 clients connecting at once the accept
 * queue overflows, Linux drops the handshake's last ACK, and the client waits for a greeting
 * until the SYN-ACK retransmissions get through (up to a minute): a measurement of the
 * backlog, not of the server. Postfix listens with 400 here, mxgate with 1024.
 *
 * SHIM_DURABLE=1: makes the queue commit durable before the 250, as Postfix's and mxgate's
 * are. OpenSMTPD 6.8 commits a message by renaming /incoming/<msgid> (the message file and
 * its envelopes, written without fsync) to /queue/<bucket>/<msgid>, then answers 250;
 * nothing is fsynced. This shim wraps rename(): when the source is a directory under
 * /incoming/, it renames, then fdatasyncs every file of the renamed directory, fsyncs its
 * directories and the destination's parent, and only then returns (so the 250 follows).
 * Syncing after the rename rather than before costs one journal commit per message instead
 * of two (on ext4 the first fdatasync commits the rename with the data): the cheapest
 * durable commit this queue layout allows, so the comparison favours OpenSMTPD. A crash
 * between the rename and the syncs can leave an incomplete message in the queue, but no
 * 250 was given for it. mkdir() of a new bucket under /queue/ fsyncs its parent. The queue
 * process runs chrooted in the spool, so its paths start with /incoming/ and /queue/.
 *
 *   cc -O2 -shared -fPIC -o shim.so opensmtpd-shim.c -ldl
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static int env_int(const char *name)
{
	const char *v = getenv(name);

	return v ? atoi(v) : 0;
}

int listen(int fd, int backlog)
{
	static int (*real)(int, int);
	int want = env_int("SHIM_BACKLOG");

	if (!real)
		real = (int (*)(int, int))dlsym(RTLD_NEXT, "listen");
	return real(fd, backlog < want ? want : backlog);
}

static int sync_path(const char *path, int data_only)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	int r;

	if (fd == -1)
		return -1;
	r = data_only ? fdatasync(fd) : fsync(fd);
	close(fd);
	return r;
}

/* fdatasync every regular file below dir, fsync every directory (depth-first). */
static int sync_tree(const char *dir, int depth)
{
	char p[PATH_MAX];
	struct dirent *e;
	struct stat st;
	DIR *d;
	int r = 0;

	if (depth > 4 || (d = opendir(dir)) == NULL)
		return -1;
	while ((e = readdir(d)) != NULL) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
		if (lstat(p, &st) == -1)
			r = -1;
		else if (S_ISDIR(st.st_mode))
			r |= sync_tree(p, depth + 1);
		else if (S_ISREG(st.st_mode))
			r |= sync_path(p, 1);
	}
	closedir(d);
	return r | sync_path(dir, 0);
}

static int sync_parent(const char *path)
{
	char p[PATH_MAX];
	char *slash;

	snprintf(p, sizeof p, "%s", path);
	if ((slash = strrchr(p, '/')) == NULL)
		return sync_path(".", 0);
	if (slash == p)
		slash[1] = '\0';
	else
		*slash = '\0';
	return sync_path(p, 0);
}

int rename(const char *old, const char *new)
{
	static int (*real)(const char *, const char *);
	struct stat st;
	int r;

	if (!real)
		real = (int (*)(const char *, const char *))dlsym(RTLD_NEXT, "rename");
	if (!env_int("SHIM_DURABLE") || strncmp(old, "/incoming/", 10) != 0 ||
	    stat(old, &st) == -1 || !S_ISDIR(st.st_mode))
		return real(old, new);
	if ((r = real(old, new)) == -1)
		return r;
	/* On failure errno is set: OpenSMTPD answers with a temporary failure. */
	if (sync_tree(new, 0) == -1)
		return -1;
	return sync_parent(new);
}

int mkdir(const char *path, mode_t mode)
{
	static int (*real)(const char *, mode_t);
	int r;

	if (!real)
		real = (int (*)(const char *, mode_t))dlsym(RTLD_NEXT, "mkdir");
	r = real(path, mode);
	if (r == 0 && env_int("SHIM_DURABLE") && strncmp(path, "/queue/", 7) == 0)
		sync_parent(path);
	return r;
}

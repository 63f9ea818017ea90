/*
 * Atelier compat preload for old gVisor releases.
 *
 * runsc 20221219 (Debian bookworm's) answers statx(2) with EINVAL when the
 * flags include AT_NO_AUTOMOUNT, which coreutils >= 9 always passes, so
 * `ls` and `stat` fail in every sandbox. AT_NO_AUTOMOUNT only matters for
 * automount points, which a sandbox does not have: retry without it.
 * Newer runsc accepts the flag and this wrapper is then a pass-through.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

int statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *buf)
{
    long rc = syscall(SYS_statx, dirfd, path, flags, mask, buf);
    if (rc == -1 && errno == EINVAL && (flags & AT_NO_AUTOMOUNT)) {
        rc = syscall(SYS_statx, dirfd, path, flags & ~AT_NO_AUTOMOUNT, mask, buf);
    }
    return (int)rc;
}

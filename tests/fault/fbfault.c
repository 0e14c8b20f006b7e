/* fbfault.c - an LD_PRELOAD shim for the black-box tests: a disk that is
 * full, read-only or failing, without root or a small mount.
 *
 * While the file named by FB_FAULT_FLAG exists, every write to a regular
 * file (write, writev, pwrite, fsync...) fails with the errno the flag
 * file names: "ENOSPC" (the default, for an empty file), "EROFS" or
 * "EIO". Sockets and pipes (the clients, the logs) are untouched, and so
 * are reads: what the store holds stays readable, as on a real full disk.
 * Removing the flag file is the space coming back.
 *
 * Only the tests load it; it is never linked into fusebox. */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

/* 0: no fault now; otherwise the errno a write to fd must fail with. */
static int fault_for(int fd)
{
    const char *flag = getenv("FB_FAULT_FLAG");
    struct stat st;
    if (flag == NULL || stat(flag, &st) != 0)
        return 0;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        return 0;
    char what[16] = {0};
    int rfd = open(flag, O_RDONLY | O_CLOEXEC);
    if (rfd >= 0) {
        ssize_t n = read(rfd, what, sizeof what - 1);
        (void)n;
        close(rfd);
    }
    if (strncmp(what, "EROFS", 5) == 0)
        return EROFS;
    if (strncmp(what, "EIO", 3) == 0)
        return EIO;
    return ENOSPC;
}

static void *next(const char *name)
{
    return dlsym(RTLD_NEXT, name);
}

#define FAIL_IF_FAULT(fd)                                                      \
    do {                                                                       \
        int e_ = fault_for(fd);                                                \
        if (e_ != 0) {                                                         \
            errno = e_;                                                        \
            return -1;                                                         \
        }                                                                      \
    } while (0)

ssize_t write(int fd, const void *buf, size_t n)
{
    static ssize_t (*real)(int, const void *, size_t);
    if (real == NULL)
        real = next("write");
    FAIL_IF_FAULT(fd);
    return real(fd, buf, n);
}

ssize_t writev(int fd, const struct iovec *iov, int cnt)
{
    static ssize_t (*real)(int, const struct iovec *, int);
    if (real == NULL)
        real = next("writev");
    FAIL_IF_FAULT(fd);
    return real(fd, iov, cnt);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
    static ssize_t (*real)(int, const void *, size_t, off_t);
    if (real == NULL)
        real = next("pwrite");
    FAIL_IF_FAULT(fd);
    return real(fd, buf, n, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off)
{
    static ssize_t (*real)(int, const void *, size_t, off64_t);
    if (real == NULL)
        real = next("pwrite64");
    FAIL_IF_FAULT(fd);
    return real(fd, buf, n, off);
}

ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off)
{
    static ssize_t (*real)(int, const struct iovec *, int, off_t);
    if (real == NULL)
        real = next("pwritev");
    FAIL_IF_FAULT(fd);
    return real(fd, iov, cnt, off);
}

int fsync(int fd)
{
    static int (*real)(int);
    if (real == NULL)
        real = next("fsync");
    FAIL_IF_FAULT(fd);
    return real(fd);
}

int fdatasync(int fd)
{
    static int (*real)(int);
    if (real == NULL)
        real = next("fdatasync");
    FAIL_IF_FAULT(fd);
    return real(fd);
}

int fallocate(int fd, int mode, off_t off, off_t len)
{
    static int (*real)(int, int, off_t, off_t);
    if (real == NULL)
        real = next("fallocate");
    FAIL_IF_FAULT(fd);
    return real(fd, mode, off, len);
}

/* Shrinking a file frees space, so a full disk allows it; a read-only
 * one does not. */
int ftruncate(int fd, off_t len)
{
    static int (*real)(int, off_t);
    if (real == NULL)
        real = next("ftruncate");
    int e = fault_for(fd);
    if (e == EROFS || e == EIO) {
        errno = e;
        return -1;
    }
    if (e == ENOSPC) {
        struct stat st;
        if (fstat(fd, &st) == 0 && len > st.st_size) {
            errno = ENOSPC;
            return -1;
        }
    }
    return real(fd, len);
}

/* The everyday process syscalls a single-threaded program uses: eventfd, pipe2 with poll and
   select, prctl, sched_yield, getrusage, times, umask, fchmod, utimensat, copy_file_range,
   sendfile. Prints only what is the same on every Linux. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <errno.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/times.h>
int main(void) {
    int e = eventfd(3, EFD_NONBLOCK);
    uint64_t v = 4; write(e, &v, 8); read(e, &v, 8);
    ssize_t r = read(e, &v, 8);
    printf("eventfd sum 7: %d, then empty: %zd %s\n", v == 7, r, strerror(errno));
    int s = eventfd(2, EFD_SEMAPHORE | EFD_NONBLOCK); read(s, &v, 8);
    printf("semaphore gives %llu\n", (unsigned long long)v);
    int p[2]; pipe2(p, O_CLOEXEC | O_NONBLOCK);
    struct pollfd fds[3] = {{p[0], POLLIN, 0}, {p[1], POLLOUT, 0}, {e, POLLIN, 0}};
    printf("poll empty pipe: %d [%x %x %x]\n", poll(fds, 3, 10), fds[0].revents, fds[1].revents, fds[2].revents);
    write(p[1], "hello", 5);
    printf("poll after write: %d [%x]\n", poll(fds, 1, 0), fds[0].revents);
    fd_set rd; FD_ZERO(&rd); FD_SET(p[0], &rd); FD_SET(e, &rd);
    struct timeval tv = {0, 1000};
    int n = select((p[0] > e ? p[0] : e) + 1, &rd, NULL, NULL, &tv);
    printf("select: %d pipe %d eventfd %d\n", n, FD_ISSET(p[0], &rd), FD_ISSET(e, &rd));
    char buf[16] = {0}; read(p[0], buf, sizeof buf - 1); close(p[1]);
    printf("read [%s], after close: %d [%x]\n", buf, poll(fds, 1, 0), fds[0].revents);
    prctl(PR_SET_NAME, "worker");
    char name[16] = {0}; prctl(PR_GET_NAME, name);
    printf("prctl name ok %d, yield %d\n", name[0] != 0, sched_yield());
    struct rusage ru; struct tms t;
    printf("getrusage %d, times ok %d\n", getrusage(RUSAGE_SELF, &ru), times(&t) != (clock_t)-1);
    mode_t old = umask(077); printf("umask was %03o now %03o\n", old & 0777, umask(old) & 0777);
    char path[] = "/tmp/fx86-sysmisc-XXXXXX"; int f = mkstemp(path);
    write(f, "0123456789abcdef", 16);
    fchmod(f, 0640); struct stat st; fstat(f, &st);
    printf("fchmod mode %o\n", st.st_mode & 0777);
    struct timespec ts[2] = {{1000000, 0}, {2000000, 0}};
    printf("utimensat %d\n", utimensat(AT_FDCWD, path, ts, 0));
    stat(path, &st);
    printf("mtime set %ld\n", (long)st.st_mtime);
    struct stat host; stat("/etc/passwd", &host);
    printf("host file mtime %ld size %lld\n", (long)host.st_mtime, (long long)host.st_size);
    char path2[] = "/tmp/fx86-sysmisc-copy-XXXXXX"; int g = mkstemp(path2);
    loff_t in_off = 4;
    printf("copy_file_range %zd\n", copy_file_range(f, &in_off, g, NULL, 6, 0));
    off_t off = 10; printf("sendfile %zd\n", sendfile(g, f, &off, 100));
    lseek(g, 0, SEEK_SET); memset(buf, 0, sizeof buf); read(g, buf, 15);
    printf("copied [%s] offsets %lld %lld\n", buf, (long long)in_off, (long long)off);
    unlink(path); unlink(path2);
    return 0;
}

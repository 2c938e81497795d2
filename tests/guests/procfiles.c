/* What a process learns about itself and the machine from /proc, /sys and /dev, and what
   happens when it tries to make threads or processes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
#include <errno.h>
#include <pthread.h>
#include <cpuid.h>
#include <sys/auxv.h>
#include <sys/wait.h>
#include <dirent.h>
static char buf[1 << 16];
static int slurp(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    int n = 0, r;
    while ((r = read(fd, buf + n, sizeof buf - 1 - n)) > 0) n += r;
    close(fd);
    buf[n] = 0;
    return n;
}
static void *thread_main(void *p) { return p; }
int main(int argc, char **argv) {
    char exe[512] = {0};
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    printf("exe matches argv0: %d\n", n > 0 && strstr(exe, "procfiles") != NULL);
    slurp("/proc/self/maps");
    printf("maps names exe: %d, has stack: %d, has libc: %d\n", strstr(buf, exe) != NULL,
           strstr(buf, "[stack]") != NULL, strstr(buf, "libc.so.6") != NULL);
    unsigned long entry = getauxval(AT_ENTRY), base = getauxval(AT_BASE);
    int an = slurp("/proc/self/auxv");
    unsigned long *av = (unsigned long *)buf, a_entry = 0;
    for (int i = 0; i + 1 < an / 8; i += 2) if (av[i] == AT_ENTRY) a_entry = av[i + 1];
    printf("auxv entry agrees: %d, loader base set: %d\n", a_entry == entry && entry != 0, base != 0);
    slurp("/proc/cpuinfo");
    unsigned a, b, c, d; __cpuid(1, a, b, c, d);
    char *flags = strstr(buf, "flags");
    printf("cpuinfo sse2 %d/%d avx %d/%d mmx %d/%d\n", flags && strstr(flags, " sse2") != NULL, (d >> 26) & 1,
           flags && strstr(flags, " avx") != NULL, (c >> 28) & 1, flags && strstr(flags, " mmx") != NULL, (d >> 23) & 1);
    printf("online cpus %ld\n", sysconf(_SC_NPROCESSORS_ONLN));
    slurp("/proc/self/cmdline");
    printf("cmdline arg1: %s\n", buf + strlen(buf) + 1);
    unsigned char r[8]; int fd = open("/dev/urandom", O_RDONLY); read(fd, r, 8); close(fd);
    printf("urandom %02x%02x%02x%02x%02x%02x%02x%02x\n", r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]);
    fd = open("/dev/zero", O_RDONLY); read(fd, r, 8); close(fd);
    printf("zero %d, null write %zd\n", r[0] | r[7], write(open("/dev/null", O_WRONLY), "x", 1));
    printf("ld.so.cache readable: %d\n", access("/etc/ld.so.cache", R_OK) == 0);
    int pf = open("/etc/passwd", O_RDONLY);
    char fdpath[64], target[256] = {0};
    snprintf(fdpath, sizeof fdpath, "/proc/self/fd/%d", pf);
    readlink(fdpath, target, sizeof target - 1);
    DIR *fdd = opendir("/proc/self/fd");
    int listed = 0, seen = 0;
    struct dirent *de;
    while (fdd && (de = readdir(fdd))) { if (de->d_name[0] != '.') listed++; if (atoi(de->d_name) == pf) seen = 1; }
    if (fdd) closedir(fdd);
    printf("fd link %s, fd dir lists it %d, entries >= 5: %d\n", target, seen, listed >= 5);
    close(pf);
    if (argc > 2) {
        pthread_t t; int e = pthread_create(&t, NULL, thread_main, NULL);
        printf("pthread_create: %s\n", e ? strerror(e) : "ok");
        pid_t p = fork();
        if (p == 0) _exit(0);
        printf("fork: %s\n", p < 0 ? strerror(errno) : "ok");
        if (p > 0) waitpid(p, NULL, 0);
    }
    return 0;
}

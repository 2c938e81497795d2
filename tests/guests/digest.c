/* Reads a file named on the command line, a directory listing and all of stdin, and prints
   digests of each: what a recording must capture for the run to replay anywhere. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>
static unsigned long long fnv(const unsigned char *p, size_t n, unsigned long long h) {
    for (size_t i = 0; i < n; i++) { h ^= p[i]; h *= 1099511628211ULL; }
    return h;
}
int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: digest FILE DIR\n"); return 2; }
    FILE *f = fopen(argv[1], "rb");
    if (!f) { perror(argv[1]); return 1; }
    static unsigned char buf[1 << 16];
    unsigned long long h = 1469598103934665603ULL, total = 0;
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) { h = fnv(buf, n, h); total += n; }
    fclose(f);
    printf("file %s: %llu bytes, fnv %016llx\n", argv[1], total, h);
    struct stat st;
    if (stat(argv[1], &st) == 0) printf("stat size %lld\n", (long long)st.st_size);
    DIR *d = opendir(argv[2]);
    int entries = 0;
    unsigned long long dh = 1469598103934665603ULL;
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) { entries++; dh = fnv((const unsigned char *)e->d_name, strlen(e->d_name), dh); }
        closedir(d);
    }
    printf("dir %s: %d entries\n", argv[2], entries);
    unsigned long long sh = 1469598103934665603ULL, lines = 0, sin = 0;
    while ((n = read(0, buf, sizeof buf)) > 0) {
        sh = fnv(buf, n, sh); sin += n;
        for (size_t i = 0; i < n; i++) lines += buf[i] == '\n';
    }
    printf("stdin: %llu bytes, %llu lines, fnv %016llx\n", sin, lines, sh);
    if (argc > 3 && strcmp(argv[3], "crash") == 0) { printf("crashing\n"); fflush(stdout); abort(); }
    return (int)(h & 7);
}

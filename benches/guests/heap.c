/* A 1 GiB heap, then rounds that each dirty about 1% of its pages with some computing in
 * between: the snapshot-memory benchmark (memory held should grow with pages dirtied, not
 * with heap size). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(int argc, char **argv) {
    size_t n = (size_t)1 << 30, pages = n / 4096;
    int rounds = argc > 1 ? atoi(argv[1]) : 20;
    char *p = malloc(n);
    memset(p, 1, n);
    for (size_t pg = 0; pg < pages; pg++) *(unsigned *)(p + pg * 4096) = (unsigned)pg;
    unsigned x = 1; long sum = 0;
    for (int r = 0; r < rounds; r++) {
        for (size_t k = 0; k < pages / 100; k++) {
            x = x * 1103515245u + 12345u;
            size_t pg = (x >> 4) % pages;
            p[pg * 4096 + 8 + r % 4000] += (char)r;
        }
        for (long i = 0; i < 200000; i++) sum += i * r ^ (sum >> 3);
    }
    long check = 0;
    for (size_t pg = 0; pg < pages; pg += 97) check += p[pg * 4096 + 8 + pg % 4000];
    printf("%ld %ld\n", sum, check);
    return 0;
}

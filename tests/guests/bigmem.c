/* Large fresh anonymous memory: filled in one go, written again after system calls (exits),
 * then a hole is unmapped in it and part of it made read-only (the mappings change), and it
 * is written and read back; then buffers are mapped, filled and unmapped again and again. */
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MB (1ul << 20)

static int writable(size_t i) {
    return !(i >= 8 * MB + 4096 && i < 8 * MB + 4 * 4096) && !(i >= 16 * MB && i < 18 * MB);
}

int main(void) {
    size_t n = 64 * MB;
    unsigned char *p = mmap(0, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 1;
    memset(p, 1, n / 2);
    getppid();
    for (size_t i = 0; i < n; i += 4096) p[i] += (unsigned char)(i >> 12);
    getppid();
    for (size_t i = 0; i < n / 2; i += 4096 * 3) p[i + 9] = 7;
    if (munmap(p + 8 * MB + 4096, 3 * 4096) || mprotect(p + 16 * MB, 2 * MB, PROT_READ)) return 2;
    for (size_t i = 0; i < n; i += 4096 * 5)
        if (writable(i)) p[i + 5] ^= 0x5a;
    unsigned long sum = 0;
    for (size_t i = 0; i < n; i += 256)
        if (!(i >= 8 * MB + 4096 && i < 8 * MB + 4 * 4096)) sum = sum * 31 + p[i];
    for (int r = 0; r < 40; r++) {
        size_t m = 8 * MB;
        unsigned char *q = mmap(0, m, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (q == MAP_FAILED) return 3;
        memset(q, r, m);
        for (size_t i = 0; i < m; i += 4096 * 11) q[i] += (unsigned char)i;
        for (size_t i = 0; i < m; i += 4096) sum = sum * 31 + q[i];
        munmap(q, m);
    }
    printf("%lu\n", sum);
    return 0;
}

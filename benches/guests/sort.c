/* Sorting: qsort and an insertion/merge sort on generated integers. */
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
static int cmp(const void *a, const void *b) { uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b; return (x > y) - (x < y); }
static void msort(uint32_t *a, uint32_t *t, int n) {
    if (n < 16) { for (int i = 1; i < n; i++) { uint32_t v = a[i]; int j = i - 1; while (j >= 0 && a[j] > v) { a[j + 1] = a[j]; j--; } a[j + 1] = v; } return; }
    int h = n / 2; msort(a, t, h); msort(a + h, t, n - h);
    int i = 0, j = h, k = 0; while (i < h && j < n) t[k++] = a[i] <= a[j] ? a[i++] : a[j++];
    while (i < h) t[k++] = a[i++]; while (j < n) t[k++] = a[j++];
    for (k = 0; k < n; k++) a[k] = t[k];
}
int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 400000;
    uint32_t *a = malloc(n * 4), *b = malloc(n * 4), *t = malloc(n * 4); uint32_t x = 12345;
    for (int i = 0; i < n; i++) { x = x * 1664525 + 1013904223; a[i] = b[i] = x >> 3; }
    qsort(a, n, 4, cmp); msort(b, t, n);
    uint64_t s = 0; for (int i = 0; i < n; i++) s = s * 31 + (a[i] ^ b[i]) + a[i] % 7;
    printf("%llu %u %u\n", (unsigned long long)s, a[0], a[n - 1]);
    return 0;
}

/* The CPU model and the virtual clock as a guest sees them. */
#include <stdio.h>
#include <cpuid.h>
#include <x86intrin.h>
#include <time.h>
int main(void) {
    unsigned a, b, c, d; char v[13] = {0};
    __cpuid(0, a, b, c, d); *(unsigned *)v = b; *(unsigned *)(v + 4) = d; *(unsigned *)(v + 8) = c;
    __cpuid(1, a, b, c, d);
    printf("vendor %s sse2 %d avx %d popcnt %d\n", v, (d >> 26) & 1, (c >> 28) & 1, (c >> 23) & 1);
    unsigned long long t1 = __rdtsc(), t2 = __rdtsc();
    struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
    printf("tsc increases %d, monotonic>0 %d\n", t2 > t1, ts.tv_sec > 0 || ts.tv_nsec > 0);
    return 0;
}

/* Integer arithmetic, flags through branches, shifts, rotates, mul/div, bit ops. */
#include <stdio.h>
#include <stdint.h>
#include <limits.h>
#include <stdlib.h>

static uint64_t rng = 88172645463325252ull;
static uint64_t next(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }

__attribute__((noinline)) static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 20000;
    uint64_t acc = 0;
    for (int i = 0; i < n; i++) {
        uint64_t a = next(), b = next() | 1;
        int32_t sa = (int32_t)a, sb = (int32_t)b | 1;
        int8_t c8 = (int8_t)a; int16_t c16 = (int16_t)b;
        acc += a / b + a % b;
        acc ^= (uint64_t)(sa / sb) + (uint64_t)(sa % sb);
        acc += (unsigned __int128)a * b >> 64;
        acc += (uint64_t)((__int128)(int64_t)a * (int64_t)b >> 64);
        acc += rotl(a, i % 63 + 1) ^ __builtin_bswap64(b) ^ __builtin_bswap32((uint32_t)a);
        acc += __builtin_popcountll(a) + __builtin_ctzll(b) + __builtin_clzll(b);
        acc += (a > b) + (sa < sb) * 3 + ((int64_t)a <= (int64_t)b) * 5;
        acc += (uint64_t)(c8 * c16) + (uint64_t)(c8 >> 3) + (uint16_t)(c16 << 5);
        acc += (a >> (i & 63)) + ((int64_t)b >> (i & 63)) + (a << (i & 31));
        uint32_t u = (uint32_t)a; acc += u / ((uint32_t)b | 1) + (uint16_t)u / ((uint16_t)b | 1) + (uint8_t)u / ((uint8_t)b | 1);
        if (__builtin_add_overflow(sa, sb, &sa)) acc += 7;
        if (__builtin_mul_overflow((int64_t)a, (int64_t)b, (int64_t*)&a)) acc += 11;
        acc = acc * 6364136223846793005ull + 1442695040888963407ull;
    }
    printf("acc=%llu\n", (unsigned long long)acc);
    printf("limits %d %d %lld\n", INT_MIN / -1 == INT_MIN, -7 / 2, (long long)LLONG_MIN % -1);
    return 0;
}

/* tzcnt and lzcnt encodings (`rep bsf`, which GCC emits for __builtin_ctz in generic code),
 * in a hot loop, with zero sources too. fx86's CPU model has neither BMI1 nor LZCNT, so they
 * execute as bsf and bsr, as on such a CPU: a zero source leaves the destination as it was.
 * (Natively on a CPU with BMI1 the answer differs; the backends must agree with each other.) */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static uint64_t tz32(uint64_t init, uint32_t src) {
    uint64_t r = init;
    __asm__ volatile("rep bsf %1, %k0" : "+r"(r) : "r"(src) : "cc");
    return r;
}

static uint64_t lz64(uint64_t init, uint64_t src) {
    uint64_t r = init;
    __asm__ volatile("lzcnt %1, %0" : "+r"(r) : "r"(src) : "cc");
    return r;
}

static uint16_t tz16(uint16_t init, uint16_t src) {
    uint16_t r = init;
    __asm__ volatile("tzcnt %1, %0" : "+r"(r) : "r"(src) : "cc");
    return r;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 2000000;
    uint64_t x = 0x9e3779b97f4a7c15ull, s = 0;
    for (int i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        uint32_t v = (i % 7 == 0) ? 0 : (uint32_t)x;
        s += tz32(~(uint64_t)i, v) * 3 + (uint64_t)__builtin_ctzll(x | 1);
        s += lz64(i, (i % 5 == 0) ? 0 : x) + tz16((uint16_t)i, (i % 3 == 0) ? 0 : (uint16_t)x);
    }
    printf("%llu\n", (unsigned long long)s);
    return 0;
}

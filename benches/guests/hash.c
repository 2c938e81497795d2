/* Integer hashing: FNV-1a and xorshift mixing over a generated buffer. */
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 40;
    static uint8_t buf[1 << 20];
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < sizeof buf; i++) { x ^= x << 13; x ^= x >> 7; x ^= x << 17; buf[i] = (uint8_t)x; }
    uint64_t h = 1469598103934665603ull, m = 0;
    for (int r = 0; r < rounds; r++)
        for (size_t i = 0; i < sizeof buf; i++) { h ^= buf[i]; h *= 1099511628211ull; m += (h >> 29) ^ (h << 7); }
    printf("%016llx %016llx\n", (unsigned long long)h, (unsigned long long)m);
    return 0;
}

/* Code that becomes hot, is patched, and becomes hot again, as JITs do when they recompile: a
   loop in a writable and executable mapping calls a function there hundreds of times (so both
   are translated and jump straight into each other), then between rounds the function's
   constant and the loop's call target are rewritten. */
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
typedef long (*loopfn)(long n);
int main(void) {
    unsigned char *p = mmap(0, 8192, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { perror("mmap"); return 1; }
    static const unsigned char f[] = {0xb8, 0, 0, 0, 0, 0xc3};             /* mov eax, imm; ret */
    static const unsigned char g[] = {0xb8, 0, 0, 0, 0, 0x83, 0xc0, 0x05, 0xc3}; /* ...; add eax, 5 */
    static const unsigned char loop[] = {
        0x31, 0xd2,                   /* xor edx, edx */
        0x31, 0xc9,                   /* xor ecx, ecx */
        0xe8, 0, 0, 0, 0,             /* 4: call f or g */
        0x48, 0x01, 0xc2,             /* add rdx, rax */
        0x48, 0xff, 0xc1,             /* inc rcx */
        0x48, 0x39, 0xf9,             /* cmp rcx, rdi */
        0x7c, 0xf0,                   /* jl 4 */
        0x48, 0x89, 0xd0,             /* mov rax, rdx */
        0xc3,                         /* ret */
    };
    memcpy(p, f, sizeof f);
    memcpy(p + 64, g, sizeof g);
    memcpy(p + 4096, loop, sizeof loop);
    long total = 0;
    for (int r = 0; r < 40; r++) {
        int k = r * 7 + 1;
        memcpy(p + 1, &k, 4);
        memcpy(p + 65, &k, 4);
        /* The call target changes every fifth round only: in the others just the callee's
           constant does, under a caller that stays hot. */
        int target = (r / 5) % 2 ? 64 : 0;
        int rel = target - (4096 + 9);
        if (r % 5 == 0) memcpy(p + 4096 + 5, &rel, 4);
        total = total * 3 + ((loopfn)(p + 4096))(500 + r);
    }
    printf("total=%ld\n", total);
    return 0;
}

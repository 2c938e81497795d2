/* Code written into a writable mapping and then made executable (W^X, as JITs do), holding an
 * instruction that must not run natively (cpuid), called often with system calls between. */
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
typedef unsigned (*fn)(void);
int main(void) {
    unsigned char *p = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 1;
    /* push rbx; xor eax, eax; cpuid; mov eax, ebx; pop rbx; ret */
    static const unsigned char code[] = {0x53, 0x31, 0xc0, 0x0f, 0xa2, 0x89, 0xd8, 0x5b, 0xc3};
    memcpy(p, code, sizeof code);
    getppid();
    if (mprotect(p, 4096, PROT_READ | PROT_EXEC)) return 2;
    fn f = (fn)p;
    unsigned long s = 0;
    for (int i = 0; i < 20000; i++) {
        s = s * 3 + f();
        if (i % 8 == 0) getppid();
    }
    printf("%lu\n", s);
    return 0;
}

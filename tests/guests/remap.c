/* Code whose mapping changes under it: rewritten at the same address between mprotect calls,
 * replaced by munmap + mmap at the same address, and made non-executable (the next call must
 * fault); then the x87 control and status words stored to memory after changing them. */
#include <fenv.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

typedef int (*fn)(void);
static sigjmp_buf env;
static void on_segv(int sig) { siglongjmp(env, sig); }

/* mov eax, imm32; ret */
static void put(unsigned char *p, int v) {
    unsigned char code[6] = {0xb8, 0, 0, 0, 0, 0xc3};
    memcpy(code + 1, &v, 4);
    memcpy(p, code, sizeof code);
}

int main(void) {
    unsigned char *p = mmap(0, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 1;
    long sum = 0;
    for (int round = 1; round <= 50; round++) {
        if (mprotect(p, 8192, PROT_READ | PROT_WRITE)) return 2;
        put(p, round);
        put(p + 4096, 1000 * round);
        if (mprotect(p, 8192, PROT_READ | PROT_EXEC)) return 3;
        for (int k = 0; k < 100; k++) sum += ((fn)p)() + ((fn)(p + 4096))();
    }
    printf("rewritten: %ld\n", sum);
    /* The second page replaced by a fresh mapping with other code. */
    if (munmap(p + 4096, 4096)) return 4;
    unsigned char *q = mmap(p + 4096, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (q != p + 4096) return 5;
    put(q, 77);
    if (mprotect(q, 4096, PROT_READ | PROT_EXEC)) return 6;
    printf("remapped: %d\n", ((fn)q)());
    /* Made readable only: calling it now faults. */
    signal(SIGSEGV, on_segv);
    if (mprotect(p, 4096, PROT_READ)) return 7;
    int sig = sigsetjmp(env, 1);
    if (sig == 0) printf("no fault: %d\n", ((fn)p)());
    else printf("fault: signal %d\n", sig);
    /* And executable again: it runs. */
    if (mprotect(p, 4096, PROT_READ | PROT_EXEC)) return 8;
    printf("again: %d\n", ((fn)p)());

    unsigned short cw = 0, sw = 0;
    fesetround(FE_UPWARD);
    __asm__ volatile("fnstcw %0" : "=m"(cw));
    volatile double zero = 0.0;
    volatile long double x = 1.0L / (long double)zero;
    __asm__ volatile("fnstsw %0" : "=m"(sw));
    printf("cw %#x sw %#x %s\n", cw, sw & 0x3f, x > 0 ? "inf" : "?");
    return 0;
}

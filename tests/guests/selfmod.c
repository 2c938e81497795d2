/* Self-modifying code, as JITs and hot-patchers do: code written into an executable mapping,
   patched between calls, patched in a loop, and an instruction that rewrites the very next
   instruction of its own block. */
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
typedef int (*fn)(void);
int main(void) {
    unsigned char *p = mmap(0, 8192, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { perror("mmap"); return 1; }
    static const unsigned char ret_imm[] = {0xb8, 1, 0, 0, 0, 0xc3}; /* mov eax, 1; ret */
    memcpy(p, ret_imm, sizeof ret_imm);
    fn f = (fn)p;
    int a = f();
    int v = 42; memcpy(p + 1, &v, 4);
    int b = f();
    long sum = 0;
    for (int i = 0; i < 1000; i++) { memcpy(p + 1, &i, 4); sum += f(); }
    /* mov byte [rip+1], 0x2a ; mov eax, 0 ; ret -- the first store patches the second's immediate */
    static const unsigned char inblock[] = {0xc6, 0x05, 1, 0, 0, 0, 0x2a, 0xb8, 0, 0, 0, 0, 0xc3};
    memcpy(p + 4096, inblock, sizeof inblock);
    int c = ((fn)(p + 4096))();
    int d = ((fn)(p + 4096))();
    /* Make it read-only-exec, then writable again, and patch once more. */
    mprotect(p, 4096, PROT_READ | PROT_EXEC);
    int e = f();
    mprotect(p, 4096, PROT_READ | PROT_WRITE | PROT_EXEC);
    v = -7; memcpy(p + 1, &v, 4);
    printf("a=%d b=%d sum=%ld inblock=%d again=%d ro=%d last=%d\n", a, b, sum, c, d, e, f());
    return 0;
}

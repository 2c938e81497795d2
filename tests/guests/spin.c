/* Says it has started, then computes forever without a system call: a run that only a
   signal to fx86 (Ctrl-C) can end, in the middle of a long native stretch on the KVM
   backend. */
#include <stdio.h>
int main(void) {
    printf("spinning\n");
    fflush(stdout);
    volatile unsigned long sink = 0;
    unsigned long x = 1;
    for (;;) {
        x = x * 6364136223846793005UL + 1442695040888963407UL;
        sink = x >> 7;
    }
}

/* Says it has started, then computes without a system call: forever (a run that only a
   signal to fx86, Ctrl-C, can end, in the middle of a long native stretch on the KVM
   backend), or for argv[1] rounds, printing the result. */
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    printf("spinning\n");
    fflush(stdout);
    unsigned long rounds = argc > 1 ? strtoul(argv[1], 0, 10) : 0;
    volatile unsigned long sink = 0;
    unsigned long x = 1;
    for (unsigned long i = 0; rounds == 0 || i < rounds; i++) {
        x = x * 6364136223846793005UL + 1442695040888963407UL;
        sink = x >> (x & 7);
    }
    printf("%lu\n", x + sink);
    return 0;
}

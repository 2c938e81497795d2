/* A loop on one line: gdb's `next` over it range-steps (vCont;r). */
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 1000, s = 0;
    for (long i = 0; i < n; i++) s += i * i % 13;
    printf("%ld\n", s);
    return 0;
}

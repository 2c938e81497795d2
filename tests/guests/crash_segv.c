#include <stdio.h>
int main(void) { printf("about to crash\n"); fflush(stdout); volatile int *p = (int *)16; return *p; }

#include <stdio.h>
#include <stdlib.h>
#include <assert.h>
int main(int argc, char **argv) { printf("checking\n"); fflush(stdout); assert(argc > 5 && "need more args"); return 0; }

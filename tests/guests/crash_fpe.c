#include <stdio.h>
int main(int argc, char **argv) { volatile int z = argc - 1; printf("%d\n", 100 / z); return 0; }

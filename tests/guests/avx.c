/* Uses an AVX instruction although CPUID says there is no AVX: fx86 must raise SIGILL and name it. */
#include <stdio.h>
int main(void) { printf("before\n"); fflush(stdout); __asm__ volatile("vpxor %%xmm1, %%xmm2, %%xmm3" ::: "xmm3"); printf("after\n"); return 0; }

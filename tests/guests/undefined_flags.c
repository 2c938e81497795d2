/* Flags the ISA leaves undefined (shifts, multiplies, divides, double shifts, rotates), with
 * random operands: the interpreter models AMD Zen, so native runs under KVM agree here. */
#include <stdio.h>
#include <stdint.h>
static uint64_t s = 88172645463325252ull;
static uint64_t rnd(void){ s ^= s << 13; s ^= s >> 7; s ^= s << 17; return s; }
#define RUN(name, body, ...) { unsigned long f, fin = rnd() & 0x8d5; uint64_t a = rnd(), b = rnd(); if (rnd()&1) a &= 0xff; if (rnd()&1) b>>=rnd()%64; uint64_t a0 = a; \
  __asm__ volatile("push %3\n\tpopfq\n\t" body "\n\tpushfq\n\tpopq %0" : "=&r"(f), "+r"(a), "+r"(b) : "r"(fin|0x202) : "rax","rdx","rcx","cc"); \
  printf("%-10s %016lx %3lx %016lx %016lx %3lx\n", name, (unsigned long)a, f & 0x8d5, (unsigned long)a0, (unsigned long)b, fin); }
int main(void){
  for (int k = 0; k < 100; k++) {
    RUN("shrd64", "mov %2,%%rcx\n\tshrd %%cl,%2,%1")
    RUN("shld64", "mov %2,%%rcx\n\tshld %%cl,%2,%1")
    RUN("shrd32", "mov %2,%%rcx\n\tshrd %%cl,%k2,%k1")
    RUN("shld32", "mov %2,%%rcx\n\tshld %%cl,%k2,%k1")
    RUN("shl32", "mov %2,%%rcx\n\tshl %%cl,%k1")
    RUN("shr8", "mov %2,%%rcx\n\tshr %%cl,%b1")
    RUN("sar16", "mov %2,%%rcx\n\tsar %%cl,%w1")
    RUN("rcl32", "mov %2,%%rcx\n\trcl %%cl,%k1")
    RUN("rcr8", "mov %2,%%rcx\n\trcr %%cl,%b1")
    RUN("rol16", "mov %2,%%rcx\n\trol %%cl,%w1")
    RUN("mul64", "mov %1,%%rax\n\tmul %2\n\tmov %%rax,%1")
    RUN("imul64", "mov %1,%%rax\n\timul %2\n\tmov %%rax,%1")
    RUN("mul8", "mov %1,%%rax\n\tmul %b2\n\tmov %%rax,%1")
    RUN("imul2", "imul %2,%1")
    RUN("imul3", "imul $-7,%2,%1")
    RUN("imul16", "imul %w2,%w1")
    RUN("div32", "mov %1,%%rax\n\txor %%edx,%%edx\n\tor $1,%2\n\tdiv %k2\n\tmov %%rax,%1")
    RUN("idiv64", "mov %1,%%rax\n\tcqo\n\tor $1,%2\n\tidiv %2\n\tmov %%rax,%1")
    RUN("bsf", "bsf %2,%1") RUN("bsr","bsr %2,%1") RUN("bt","bt %2,%1") RUN("bts","bts %2,%1")
    RUN("and","and %2,%1") RUN("neg","neg %1") RUN("popcnt","popcnt %2,%1")
  }
  return 0;}

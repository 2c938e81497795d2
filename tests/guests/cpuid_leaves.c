/* Every CPUID leaf, XCR0, MXCSR and the x87 control word: the CPU model as a guest sees it
 * (the KVM backend must show exactly the interpreter's model). */
#include <stdio.h>
#include <cpuid.h>
static void q(unsigned l, unsigned s){unsigned a,b,c,d; __cpuid_count(l,s,a,b,c,d); printf("%08x.%u: %08x %08x %08x %08x\n",l,s,a,b,c,d);}
int main(void){
  for (unsigned l=0;l<=0x10;l++) for(unsigned s=0;s<3;s++) q(l,s);
  for (unsigned l=0x80000000;l<=0x8000000a;l++) q(l,0);
  q(0x40000000,0); q(0x40000001,0); q(0x20,0); q(0xc0000000,0);
  unsigned lo,hi; __asm__ volatile("xgetbv":"=a"(lo),"=d"(hi):"c"(0)); printf("xcr0 %x %x\n",lo,hi);
  unsigned m; __asm__ volatile("stmxcsr %0":"=m"(m)); printf("mxcsr %x\n",m);
  unsigned short cw; __asm__ volatile("fnstcw %0":"=m"(cw)); printf("fcw %x\n",cw);
  return 0;}

/* Shifts whose undefined flags are still pending at a branch to an error path on another
   page, which does not run until the end. The search for observable flags looks there
   (classifying the cold page before it runs): where the error path overwrites the flags
   (`top_bits`), the hot shift runs natively on a CPU whose undefined flags differ from the
   model's; where it reads them (`top_flags`), they must be the model's. */
#include <stdio.h>

long top_bits(long x);
long top_flags(long x);

asm(".text\n"
    ".p2align 12\n"
    ".globl top_bits\n"
    "top_bits:\n"
    "  mov %rdi, %rax\n"
    "  shr $60, %rax\n"
    "  jne bits_cold\n"
    "  add $1, %rax\n"
    "  ret\n"
    ".globl top_flags\n"
    "top_flags:\n"
    "  mov %rdi, %rax\n"
    "  shr $60, %rax\n"
    "  jne flags_cold\n"
    "  add $1, %rax\n"
    "  ret\n"
    ".p2align 12\n"
    "bits_cold:\n"
    "  cmp $3, %rax\n"
    "  sbb %rax, %rax\n"
    "  ret\n"
    "flags_cold:\n"
    "  pushfq\n"
    "  pop %rax\n"
    "  and $0x8d5, %rax\n"
    "  ret\n"
    ".p2align 12\n");

int main(void) {
    long s = 0;
    for (long i = 0; i < 5000000; i++) {
        long x = (i * 2654435761) & 0x0fffffffffffffff;
        s = s * 3 + top_bits(x);
    }
    printf("%ld\n", s);
    for (long i = 0; i < 1000; i++) s += top_flags(i << 50);
    printf("%ld %ld %ld\n", s, top_bits(-1), top_flags(-1) + top_flags(1L << 61));
    return 0;
}

/* Undefined flags that flow into code on another page: a multiply whose flags are still
   pending when it calls through a function pointer (`call *slot(%rip)`). Where the callee
   overwrites the flags first (`killer`), the multiply may run natively on any CPU; once the
   pointer leads to code that reads them (`flags_now`), they must be the model's. The pointer
   is changed by a plain store and by the kernel (read from a pipe). */
#include <stdio.h>
#include <unistd.h>

long mul_call(long a, long b);
long killer(long x);
long flags_now(long x);
long (*volatile slot)(long) = killer;

asm(".text\n"
    ".p2align 12\n"
    ".globl mul_call\n"
    "mul_call:\n"
    "  mov %rdi, %rax\n"
    "  imul %rsi, %rax\n"
    "  mov %rax, %rdi\n"
    "  call *slot(%rip)\n"
    "  add $1, %rax\n"
    "  ret\n"
    ".p2align 12\n"
    ".globl killer\n"
    "killer:\n"
    "  cmp $1000, %rdi\n"
    "  mov %rdi, %rax\n"
    "  adc $0, %rax\n"
    "  ret\n"
    ".globl flags_now\n"
    "flags_now:\n"
    "  pushfq\n"
    "  pop %rax\n"
    "  and $0x8d5, %rax\n"
    "  ret\n");

/* Sets the pointer with `rep movsb` (a string instruction, which the interpreter executes
   whole, cannot end a native stretch in its middle). */
static void set_by_string(long (*to)(long)) {
    void *d = (void *)&slot, *s = &to;
    unsigned long n = sizeof to;
    asm volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
}

/* Calls mul_call n times; at iteration `at`, the pointer changes to `to` (a plain store or,
   with `string`, `rep movsb`, in code hot enough to run natively). */
__attribute__((noinline)) static long run(long n, long k, long at, long (*to)(long), int string) {
    long s = 0;
    for (long i = 0; i < n; i++) {
        if (i == at) {
            if (string)
                set_by_string(to);
            else
                slot = to;
        }
        s = s * 3 + mul_call(i * k, i ^ 0x5bd1e995);
    }
    return s;
}

int main(void) {
    printf("%ld\n", run(2000000, 1, 1900000, flags_now, 0));
    printf("%ld\n", run(200000, 7, 100000, killer, 0));
    printf("%ld\n", run(2000000, 2, 1900000, flags_now, 1));
    printf("%ld\n", run(200000, 9, 100000, killer, 1));
    int p[2];
    if (pipe(p)) return 1;
    long (*f)(long) = killer; /* and by the kernel */
    if (write(p[1], &f, sizeof f) != sizeof f || read(p[0], (void *)&slot, sizeof f) != sizeof f) return 2;
    printf("%ld\n", run(2000000, 3, -1, 0, 0));
    f = flags_now;
    if (write(p[1], &f, sizeof f) != sizeof f || read(p[0], (void *)&slot, sizeof f) != sizeof f) return 3;
    printf("%ld\n", run(200000, 5, -1, 0, 0));
    return 0;
}

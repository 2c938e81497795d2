/* Writes one watched variable through every kind of store: plain, rep stos, xchg, lock
 * cmpxchg, push, an SSE store and read(2). Prints the variable's address first. */
#include <stdio.h>
#include <unistd.h>
#include <emmintrin.h>
struct { long target; long pad; } s __attribute__((aligned(16)));
int main(void) {
    printf("%p\n", (void *)&s.target);
    fflush(stdout);
    *(volatile long *)&s.target = 0x11;                                   /* plain store */
    { void *d = &s.target; long n = 8; __asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(0x22) : "memory"); }
    __atomic_exchange_n(&s.target, 0x33, __ATOMIC_SEQ_CST);              /* xchg */
    __sync_val_compare_and_swap(&s.target, 0x33, 0x44);                  /* lock cmpxchg */
    __asm__ volatile("mov %%rsp, %%rbx\n lea 8(%0), %%rsp\n pushq $0x55\n mov %%rbx, %%rsp"
                     :: "r"(&s.target) : "rbx", "memory");                /* push */
    _mm_store_si128((__m128i *)&s, _mm_set_epi64x(0, 0x66));             /* SSE store */
    if (read(0, &s.target, 8) != 8) return 2;                           /* read(2) */
    printf("%lx\n", s.target);
    return 0;
}

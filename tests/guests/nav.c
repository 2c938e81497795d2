/* Source-level stepping in the TUI and gdb: calls in a loop, a global, two call sites. */
#include <stdio.h>
int depth;
__attribute__((noinline)) int square(int x) {
    depth++;
    int r = x * x;
    return r;
}
__attribute__((noinline)) int sum_squares(int n) {
    int s = 0;
    for (int i = 1; i <= n; i++) {
        s += square(i);
    }
    return s;
}
int main(void) {
    int a = sum_squares(3);
    printf("a=%d\n", a);
    int b = sum_squares(4);
    printf("b=%d\n", b);
    return a + b == 44 ? 0 : 1;
}

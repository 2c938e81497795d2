/* x87 80-bit long double: musl's and glibc's printf format through it. */
#include <stdio.h>
#include <math.h>
int main(void) {
    long double a = 1.0L / 3.0L, b = 0;
    for (int i = 1; i < 100; i++) b += (long double)i / (i + 1.5L);
    printf("%Lf %.20Le %Lg %La\n", a, b, b * 1e100L, a);
    printf("%f %.15e %Lf\n", 2.5, 1e-20, sqrtl(2.0L));
    printf("%.30Lf\n", (long double)0.1);
    long double c = 12345.678L; long long ll = (long long)c; unsigned long long u = (unsigned long long)(c * 1e10L);
    printf("%lld %llu %Lf %Lf\n", ll, u, floorl(c), fabsl(-c));
    return 0;
}

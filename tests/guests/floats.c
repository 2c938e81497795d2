/* double and float arithmetic, libm, conversions, printf of floats. */
#include <stdio.h>
#include <math.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    double x = 0.1 * argc, s = 0;
    float f = 1.5f;
    int n = argc > 1 ? atoi(argv[1]) : 2000;
    for (int i = 1; i < n; i++) {
        s += sin(x * i) * cos(i) + sqrt(i) / (i + x) + exp(-i * 0.001) + log(i);
        f = f * 1.0001f + (float)i / 3.0f;
        s += (double)(long)(s * 3.7) - floor(s) + fmod(s, 3.3) + pow(1.0001, i);
    }
    printf("%.17g %.9g %a %e %g\n", s, f, s, s * 1e-300, -s);
    printf("%d %ld %u\n", (int)(s / 1000), lrint(s), (unsigned)f);
    printf("%.3f %.3f %.3f\n", atof("3.25e2"), strtod("-0x1.8p3", 0), nan("") == nan("") ? 1.0 : 0.0);
    return 0;
}

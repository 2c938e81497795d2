/* Double-precision matrix multiply (SSE2 scalar/packed code from gcc). */
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 160;
    double *a = malloc(n * n * sizeof(double)), *b = malloc(n * n * sizeof(double)), *c = calloc(n * n, sizeof(double));
    for (int i = 0; i < n * n; i++) { a[i] = (i % 17) * 0.25 - 1.0; b[i] = (i % 13) * 0.5 + 0.125; }
    for (int i = 0; i < n; i++) for (int k = 0; k < n; k++) { double v = a[i * n + k]; for (int j = 0; j < n; j++) c[i * n + j] += v * b[k * n + j]; }
    double s = 0; for (int i = 0; i < n * n; i++) s += c[i] * (i % 3);
    printf("%.6f\n", s);
    return 0;
}

/* String functions: strlen/strchr/memcpy/memcmp/strcmp over generated text (libc's SSE2 paths). */
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 3000;
    char *buf = malloc(1 << 16), *dst = malloc(1 << 16); unsigned x = 1;
    for (int i = 0; i < (1 << 16) - 1; i++) { x = x * 1103515245 + 12345; buf[i] = 'a' + (x >> 16) % 26; if (i % 97 == 0) buf[i] = ' '; }
    buf[(1 << 16) - 1] = 0;
    unsigned long acc = 0;
    for (int r = 0; r < rounds; r++) {
        acc += strlen(buf + r % 64);
        acc += (unsigned long)(strchr(buf + r % 1000, 'z') - buf);
        memcpy(dst, buf + r % 128, 30000);
        acc += memcmp(dst, buf + r % 128, 30000) == 0;
        acc += strcmp(dst + 5, buf + 5 + r % 128) != 0;
        acc += (unsigned long)(memchr(buf, 'q' + r % 5, 60000) ? 1 : 0);
    }
    printf("%lu\n", acc);
    return 0;
}

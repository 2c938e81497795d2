/* libc string functions (SSE2 paths in glibc), qsort, snprintf, memmove overlaps. */
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
static int cmp(const void *a, const void *b) { return strcmp(*(char **)a, *(char **)b); }
int main(void) {
    char buf[4096]; char *words[300];
    unsigned seed = 7;
    for (int i = 0; i < 300; i++) {
        int n = 1 + (seed = seed * 1103515245 + 12345) % 40;
        words[i] = malloc(n + 1);
        for (int j = 0; j < n; j++) words[i][j] = 'a' + (seed = seed * 1103515245 + 12345) % 26;
        words[i][n] = 0;
    }
    qsort(words, 300, sizeof(char *), cmp);
    size_t tot = 0;
    for (int i = 0; i < 300; i++) tot += strlen(words[i]) * (i + 1);
    printf("%s %s %zu\n", words[0], words[299], tot);
    memset(buf, 'x', sizeof buf); buf[4095] = 0;
    memmove(buf + 3, buf, 1000); memmove(buf, buf + 7, 2000); memcpy(buf + 100, "hello world", 11);
    printf("%zu %p %p %d\n", strlen(buf), (void*)(strchr(buf, 'h') - buf), (void*)(strstr(buf, "world") - buf), memcmp(buf, buf + 1, 50));
    printf("%s|%10.4s|%-5d|%x|%o|%c\n", strrchr(words[5], words[5][0]), "abcdefg", 42, 0xbeef, 8, 'z');
    char *tok = strtok(strcpy(buf, "a,b;;c,d"), ",;"); int k = 0;
    while (tok) { k += *tok; tok = strtok(NULL, ",;"); }
    printf("%d %d %ld\n", k, strncmp("abc", "abd", 2), strtol("  -0x7fz", NULL, 16));
    return 0;
}

/* errno is a thread-local variable: gdb reads it through qGetTLSAddr. */
#include <stdio.h>
#include <errno.h>
#include <fcntl.h>
int main(void) {
    int fd = open("/nonexistent/fx86", O_RDONLY);
    int saved = errno;                     /* line 7: errno is ENOENT here */
    printf("%d %d\n", fd, saved);
    return 0;
}

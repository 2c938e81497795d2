/* What kind of file the standard streams are (pipes here, in tests) and how stdin reads:
 * programs size their buffers by it (GNU sort sized its buffer from a regular stdin's
 * st_size). */
#include <stdio.h>
#include <unistd.h>
#include <sys/stat.h>
static const char *kind(int fd) {
    struct stat st;
    if (fstat(fd, &st) != 0) return "error";
    if (S_ISFIFO(st.st_mode)) return "fifo";
    if (S_ISREG(st.st_mode)) return "regular";
    if (S_ISCHR(st.st_mode)) return "chardev";
    return "other";
}
int main(void) {
    printf("stdin %s stdout %s stderr %s\n", kind(0), kind(1), kind(2));
    printf("lseek on stdin %s\n", lseek(0, 0, SEEK_CUR) < 0 ? "fails" : "works");
    char buf[4096];
    long total = 0, n;
    while ((n = read(0, buf, sizeof buf)) > 0) total += n;
    printf("read %ld bytes\n", total);
    return 0;
}

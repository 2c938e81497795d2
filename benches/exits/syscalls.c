/* Exit cost: N getppid() system calls (argv[1], default 20000), each a round trip out of
 * the KVM backend's VM into fx86's Linux layer and back. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 20000, s = 0;
    for (long i = 0; i < n; i++) s += syscall(SYS_getppid);
    printf("%ld\n", s != 0);
    return 0;
}

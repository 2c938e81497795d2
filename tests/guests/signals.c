/* Signal handlers with SA_SIGINFO, a real ucontext, sigaltstack and siglongjmp out of a fault. */
#define _GNU_SOURCE
#include <stdio.h>
#include <signal.h>
#include <setjmp.h>
#include <string.h>
#include <stdlib.h>
#include <ucontext.h>
#include <unistd.h>
static sigjmp_buf jb;
static volatile int hits;
static void on_segv(int sig, siginfo_t *si, void *uc) {
    ucontext_t *u = uc;
    hits++;
    printf("signal %d code %d addr %p on_alt=%d rip_nonzero=%d\n", sig, si->si_code, si->si_addr,
           (u->uc_stack.ss_flags & SS_ONSTACK) != 0, u->uc_mcontext.gregs[REG_RIP] != 0);
    siglongjmp(jb, 1);
}
static void on_usr1(int sig) { hits += 10; printf("usr1 %d\n", sig); }
static void on_fpe(int sig, siginfo_t *si, void *uc) { (void)uc; printf("fpe %d code %d\n", sig, si->si_code); siglongjmp(jb, 2); }
int main(void) {
    stack_t ss = { .ss_sp = malloc(65536), .ss_size = 65536 };
    sigaltstack(&ss, NULL);
    struct sigaction sa; memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv; sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigaction(SIGSEGV, &sa, NULL);
    if (sigsetjmp(jb, 1) == 0) { *(volatile int *)0x1234 = 5; }
    printf("back after fault, hits=%d\n", hits);
    signal(SIGUSR1, on_usr1);
    raise(SIGUSR1);
    kill(getpid(), SIGUSR1);
    sigset_t set; sigemptyset(&set); sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &set, NULL); raise(SIGUSR1); printf("blocked, hits=%d\n", hits);
    sigprocmask(SIG_UNBLOCK, &set, NULL); printf("unblocked, hits=%d\n", hits);
    sa.sa_sigaction = on_fpe; sa.sa_flags = SA_SIGINFO; sigaction(SIGFPE, &sa, NULL);
    volatile int z = 0;
    if (sigsetjmp(jb, 1) == 0) { printf("%d\n", 5 / z); }
    printf("done hits=%d\n", hits);
    return 0;
}

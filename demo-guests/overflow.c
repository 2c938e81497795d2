/* A realistic bug for the demo: an off-by-one loop writes one element past the end of
 * `scores`, overwriting the `report` function pointer that sits right after it in the same
 * struct. The program crashes much later, far from the bad write: exactly the kind of bug
 * that reverse execution (watch the pointer, reverse-continue) finds in seconds. */
#include <stdio.h>
#include <stdlib.h>

struct team {
    long scores[8];
    void (*report)(const struct team *);
};

static void print_report(const struct team *t) {
    long sum = 0;
    for (int i = 0; i < 8; i++) sum += t->scores[i];
    printf("total score: %ld\n", sum);
}

static void record_scores(struct team *t, int rounds) {
    /* BUG: `<=` writes scores[8], which is where `report` lives. */
    for (int i = 0; i <= rounds; i++) {
        t->scores[i] = (long)(i * 37 % 11) + 0x1000;
        fprintf(stderr, "round %d: %ld\n", i, t->scores[i]);
    }
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 7;
    if (rounds > 7) rounds = 7;
    struct team *t = calloc(1, sizeof *t);
    t->report = print_report;
    record_scores(t, rounds + 1 > 8 ? 7 : rounds + 1);
    t->report(t);
    free(t);
    return 0;
}

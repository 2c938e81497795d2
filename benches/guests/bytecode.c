/* A small bytecode interpreter loop (switch dispatch), the classic branchy workload. */
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
enum { PUSH, ADD, SUB, MUL, DUP, SWAP, JNZ, DEC, POP, HALT, XOR, SHR };
int main(int argc, char **argv) {
    long iters = argc > 1 ? atol(argv[1]) : 3000000;
    /* stack: [acc, n]; loop: acc += ((acc * 7) ^ 3) >> 1; n--. */
    int64_t prog[] = { PUSH, 1, PUSH, iters, /* 4: */ SWAP, DUP, PUSH, 7, MUL, PUSH, 3, XOR, PUSH, 1, SHR, ADD, SWAP, DEC, DUP, JNZ, 4, POP, HALT };
    int64_t st[64]; int sp = 0; long pc = 0;
    for (;;) {
        switch (prog[pc++]) {
        case PUSH: st[sp++] = prog[pc++]; break;
        case ADD: sp--; st[sp - 1] += st[sp]; break;
        case SUB: sp--; st[sp - 1] -= st[sp]; break;
        case MUL: sp--; st[sp - 1] *= st[sp]; break;
        case XOR: sp--; st[sp - 1] ^= st[sp]; break;
        case SHR: sp--; st[sp - 1] = (int64_t)((uint64_t)st[sp - 1] >> st[sp]); break;
        case DUP: st[sp] = st[sp - 1]; sp++; break;
        case SWAP: { int64_t t = st[sp - 1]; st[sp - 1] = st[sp - 2]; st[sp - 2] = t; } break;
        case DEC: st[sp - 1]--; break;
        case JNZ: { int64_t v = st[--sp]; long t = prog[pc++]; if (v) pc = t; } break;
        case POP: sp--; break;
        case HALT: printf("%lld\n", (long long)st[sp - 1]); return 0;
        }
    }
}

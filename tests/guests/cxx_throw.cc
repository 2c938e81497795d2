// C++ exceptions thrown through several frames with destructors, without iostream (a small
// guest for the lockstep tester).
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
struct Guard { int *n; ~Guard() { ++*n; } };
static int unwound;
static int dive(int d) { Guard g{&unwound}; if (d == 0) throw std::runtime_error("deep"); return dive(d - 1) + 1; }
int main(int argc, char **argv) {
    int n = argc > 1 ? std::atoi(argv[1]) : 3, caught = 0;
    for (int i = 0; i < n; i++) {
        try { dive(i + 2); } catch (const std::exception &e) { caught += e.what()[0] == 'd'; }
    }
    std::printf("caught %d unwound %d\n", caught, unwound);
    return caught == n ? 0 : 1;
}

// C++ exceptions (unwinding through frames with CFI), RTTI, std containers, iostream.
#include <iostream>
#include <stdexcept>
#include <vector>
#include <map>
#include <string>
#include <algorithm>
#include <memory>
#include <cstdlib>
struct Boom : std::runtime_error { int depth; Boom(int d) : std::runtime_error("boom"), depth(d) {} };
static int dive(int n) { std::vector<int> v(n + 1, n); if (n == 0) throw Boom(v.size()); return dive(n - 1) + v[0]; }
int main(int argc, char **argv) {
    int n = argc > 1 ? std::atoi(argv[1]) : 50;
    std::map<std::string, int> m; int caught = 0;
    for (int i = 0; i < n; i++) {
        try { dive(i % 13); } catch (const Boom &b) { caught += b.depth; m[std::to_string(i % 7)] += i; }
        catch (...) { return 9; }
    }
    try { throw std::out_of_range("x"); } catch (const std::logic_error &e) { std::cout << "logic " << e.what() << "\n"; }
    std::vector<std::string> names{"delta", "alpha", "charlie", "bravo"};
    std::sort(names.begin(), names.end());
    auto p = std::make_shared<std::vector<double>>(10, 2.5);
    std::cout << caught << " " << m.size() << " " << m["3"] << " " << names[0] << names[3] << " " << (*p)[9] * 4 << std::endl;
    return 0;
}

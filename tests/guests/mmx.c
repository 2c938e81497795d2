/* MMX: packed integer arithmetic on the x87 registers, moves to and from general registers and
   memory, pextrw/pinsrw/pmovmskb, conversions to SSE, and EMMS before x87 code again. */
#include <stdio.h>
#include <string.h>
#include <mmintrin.h>
#include <xmmintrin.h>
#include <emmintrin.h>
static void show(const char *what, __m64 v) {
    unsigned long long x; memcpy(&x, &v, 8); printf("%-10s %016llx\n", what, x);
}
int main(int argc, char **argv) {
    volatile long long seed = 0x0123456789abcdefLL + argc;
    __m64 a = _mm_cvtsi64_m64(seed), b = _mm_set_pi16(-3, 32767, 7, -32768);
    show("add8", _mm_add_pi8(a, b));
    show("adds16", _mm_adds_pi16(a, b));
    show("addus8", _mm_adds_pu8(a, b));
    show("sub32", _mm_sub_pi32(a, b));
    show("mullo", _mm_mullo_pi16(a, b));
    show("mulhi", _mm_mulhi_pi16(a, b));
    show("madd", _mm_madd_pi16(a, b));
    show("cmpeq", _mm_cmpeq_pi8(a, a));
    show("cmpgt", _mm_cmpgt_pi16(a, b));
    show("packss", _mm_packs_pi16(a, b));
    show("unpacklo", _mm_unpacklo_pi8(a, b));
    show("unpackhi", _mm_unpackhi_pi32(a, b));
    show("sll", _mm_slli_pi16(a, 3));
    show("sra", _mm_srai_pi32(b, 5));
    show("srl64", _mm_srl_si64(a, _mm_cvtsi32_si64(12)));
    show("andnot", _mm_andnot_si64(a, b));
    show("xor", _mm_xor_si64(a, b));
    show("avg", _mm_avg_pu8(a, b));
    show("max", _mm_max_pi16(a, b));
    show("sad", _mm_sad_pu8(a, b));
    show("shuffle", _mm_shuffle_pi16(a, 0x1b));
    printf("extract %d\n", _mm_extract_pi16(a, 2));
    show("insert", _mm_insert_pi16(a, 0x4242, 1));
    printf("movemask %d\n", _mm_movemask_pi8(b));
    printf("to int %d %lld\n", _mm_cvtsi64_si32(a), (long long)_mm_cvtm64_si64(b));
    __m128 f = _mm_cvtpi32_ps(_mm_setzero_ps(), _mm_set_pi32(-5, 9));
    float out[4]; _mm_storeu_ps(out, f); printf("cvtpi2ps %g %g\n", out[0], out[1]);
    show("cvtps2pi", _mm_cvtps_pi32(_mm_set_ps(0, 0, -2.5f, 3.5f)));
    __m128d d = _mm_cvtpi32_pd(_mm_set_pi32(11, -12));
    double dd[2]; _mm_storeu_pd(dd, d); printf("cvtpi2pd %g %g\n", dd[0], dd[1]);
    show("movdq2q", _mm_movepi64_pi64(_mm_set_epi64x(1, 0x5555aaaa3333cccc)));
    __m64 mem[2]; mem[0] = a; _mm_stream_pi(&mem[1], b); show("stream", mem[1]);
    _mm_empty();
    volatile double x = 1.0 / 3.0; long double y = (long double)x * 3.0L;
    printf("x87 after emms %.20Lg\n", y);
    return 0;
}

/* SSE2 intrinsics, integer and float, packed and scalar. */
#include <stdio.h>
#include <emmintrin.h>
#include <stdint.h>
int main(void) {
    uint8_t b[64]; for (int i = 0; i < 64; i++) b[i] = (uint8_t)(i * 37 + 11);
    __m128i a = _mm_loadu_si128((__m128i *)b), c = _mm_loadu_si128((__m128i *)(b + 16));
    __m128i r = _mm_add_epi8(a, c); r = _mm_xor_si128(r, _mm_subs_epu8(a, c));
    r = _mm_add_epi16(r, _mm_mullo_epi16(a, c)); r = _mm_xor_si128(r, _mm_mulhi_epi16(a, c));
    r = _mm_add_epi32(r, _mm_madd_epi16(a, c)); r = _mm_add_epi64(r, _mm_mul_epu32(a, c));
    r = _mm_xor_si128(r, _mm_shuffle_epi32(r, 0x1b)); r = _mm_add_epi8(r, _mm_unpacklo_epi8(a, c));
    r = _mm_xor_si128(r, _mm_packs_epi16(a, c)); r = _mm_add_epi8(r, _mm_packus_epi16(c, a));
    r = _mm_xor_si128(r, _mm_slli_epi32(r, 3)); r = _mm_xor_si128(r, _mm_srai_epi16(r, 2));
    r = _mm_xor_si128(r, _mm_srli_si128(r, 5)); r = _mm_xor_si128(r, _mm_slli_si128(r, 3));
    r = _mm_xor_si128(r, _mm_sad_epu8(a, c)); r = _mm_xor_si128(r, _mm_avg_epu8(a, c));
    r = _mm_xor_si128(r, _mm_cmpgt_epi8(a, c)); r = _mm_xor_si128(r, _mm_shufflehi_epi16(r, 0x39));
    r = _mm_xor_si128(r, _mm_max_epi16(a, c)); r = _mm_insert_epi16(r, _mm_extract_epi16(a, 3), 6);
    int m = _mm_movemask_epi8(r);
    uint32_t o[4]; _mm_storeu_si128((__m128i *)o, r);
    printf("%08x %08x %08x %08x %04x\n", o[0], o[1], o[2], o[3], m);
    __m128d d = _mm_set_pd(1.5, -2.25), e = _mm_set_pd(3.0, 0.1);
    d = _mm_add_pd(_mm_mul_pd(d, e), _mm_div_pd(e, d)); d = _mm_sqrt_pd(_mm_max_pd(d, _mm_sub_pd(e, d)));
    __m128 f = _mm_cvtpd_ps(d); f = _mm_add_ps(f, _mm_cvtepi32_ps(_mm_set_epi32(1, -2, 3, 40)));
    __m128i t = _mm_cvttps_epi32(_mm_mul_ps(f, _mm_set1_ps(1000.0f)));
    double dd[2]; _mm_storeu_pd(dd, d); float ff[4]; _mm_storeu_ps(ff, f); int ti[4]; _mm_storeu_si128((__m128i *)ti, t);
    printf("%.17g %.17g %.9g %.9g %d %d %d\n", dd[0], dd[1], ff[0], ff[3], ti[0], ti[2], _mm_movemask_pd(_mm_cmplt_pd(d, e)));
    printf("%d %d\n", _mm_comilt_sd(d, e), _mm_ucomige_sd(e, d));
    return 0;
}

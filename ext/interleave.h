/* Three colour planes -> interleaved pixels (CHW -> HWC for C == 3).
 *
 * Not a header to share: a C source of static definitions (the dispatch
 * state included) compiled into the one translation unit of ext/_core.pyx,
 * which includes it once and calls imgconv_interleave_init() at import.
 *
 * The SSSE3 path builds 16 pixels (48 bytes) per step from one 16-byte load
 * of each plane with pshufb; it is chosen at run time when the CPU has SSSE3
 * (compiled with a target attribute, so the module loads anywhere). The plain
 * loop serves other CPUs and the tail. BENCHMARKS.md ("How the kernels got
 * there") has the timings of both.
 */
#ifndef IMGCONV_INTERLEAVE_H
#define IMGCONV_INTERLEAVE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(_MSC_VER)
#define IMGCONV_RESTRICT __restrict
#else
#define IMGCONV_RESTRICT restrict
#endif

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define IMGCONV_X86_SHUFFLE 1
#include <tmmintrin.h>
#endif

static int imgconv_interleave_simd = 0;

static void imgconv_interleave_init(void)
{
#ifdef IMGCONV_X86_SHUFFLE
    __builtin_cpu_init();
    imgconv_interleave_simd = __builtin_cpu_supports("ssse3") ? 1 : 0;
#endif
}

static void imgconv_interleave3_plain(const uint8_t *IMGCONV_RESTRICT r, const uint8_t *IMGCONV_RESTRICT g,
                                      const uint8_t *IMGCONV_RESTRICT b, uint8_t *IMGCONV_RESTRICT dst,
                                      ptrdiff_t start, ptrdiff_t hw)
{
    for (ptrdiff_t p = start; p < hw; p++) {
        dst[3 * p] = r[p];
        dst[3 * p + 1] = g[p];
        dst[3 * p + 2] = b[p];
    }
}

#ifdef IMGCONV_X86_SHUFFLE
__attribute__((target("ssse3")))
static void imgconv_interleave3_ssse3(const uint8_t *IMGCONV_RESTRICT r, const uint8_t *IMGCONV_RESTRICT g,
                                      const uint8_t *IMGCONV_RESTRICT b, uint8_t *IMGCONV_RESTRICT dst,
                                      ptrdiff_t hw)
{
    /* Output block k (16 bytes) takes pixel bytes 16k..16k+15 of the 48-byte
     * RGBRGB... run; each mask picks the plane bytes that land in it (-1 = zero). */
    const __m128i r0 = _mm_setr_epi8(0, -1, -1, 1, -1, -1, 2, -1, -1, 3, -1, -1, 4, -1, -1, 5);
    const __m128i g0 = _mm_setr_epi8(-1, 0, -1, -1, 1, -1, -1, 2, -1, -1, 3, -1, -1, 4, -1, -1);
    const __m128i b0 = _mm_setr_epi8(-1, -1, 0, -1, -1, 1, -1, -1, 2, -1, -1, 3, -1, -1, 4, -1);
    const __m128i r1 = _mm_setr_epi8(-1, -1, 6, -1, -1, 7, -1, -1, 8, -1, -1, 9, -1, -1, 10, -1);
    const __m128i g1 = _mm_setr_epi8(5, -1, -1, 6, -1, -1, 7, -1, -1, 8, -1, -1, 9, -1, -1, 10);
    const __m128i b1 = _mm_setr_epi8(-1, 5, -1, -1, 6, -1, -1, 7, -1, -1, 8, -1, -1, 9, -1, -1);
    const __m128i r2 = _mm_setr_epi8(-1, 11, -1, -1, 12, -1, -1, 13, -1, -1, 14, -1, -1, 15, -1, -1);
    const __m128i g2 = _mm_setr_epi8(-1, -1, 11, -1, -1, 12, -1, -1, 13, -1, -1, 14, -1, -1, 15, -1);
    const __m128i b2 = _mm_setr_epi8(10, -1, -1, 11, -1, -1, 12, -1, -1, 13, -1, -1, 14, -1, -1, 15);
    ptrdiff_t p = 0;
    for (; p + 16 <= hw; p += 16) {
        __m128i R = _mm_loadu_si128((const __m128i *)(r + p));
        __m128i G = _mm_loadu_si128((const __m128i *)(g + p));
        __m128i B = _mm_loadu_si128((const __m128i *)(b + p));
        __m128i o0 = _mm_or_si128(_mm_or_si128(_mm_shuffle_epi8(R, r0), _mm_shuffle_epi8(G, g0)),
                                  _mm_shuffle_epi8(B, b0));
        __m128i o1 = _mm_or_si128(_mm_or_si128(_mm_shuffle_epi8(R, r1), _mm_shuffle_epi8(G, g1)),
                                  _mm_shuffle_epi8(B, b1));
        __m128i o2 = _mm_or_si128(_mm_or_si128(_mm_shuffle_epi8(R, r2), _mm_shuffle_epi8(G, g2)),
                                  _mm_shuffle_epi8(B, b2));
        _mm_storeu_si128((__m128i *)(dst + 3 * p), o0);
        _mm_storeu_si128((__m128i *)(dst + 3 * p + 16), o1);
        _mm_storeu_si128((__m128i *)(dst + 3 * p + 32), o2);
    }
    imgconv_interleave3_plain(r, g, b, dst, p, hw);
}
#endif

/* src: three planes of hw bytes back to back; dst: hw pixels of 3 bytes. */
static void imgconv_interleave3(const uint8_t *src, uint8_t *dst, ptrdiff_t hw)
{
#ifdef IMGCONV_X86_SHUFFLE
    if (imgconv_interleave_simd) {
        imgconv_interleave3_ssse3(src, src + hw, src + 2 * hw, dst, hw);
        return;
    }
#endif
    imgconv_interleave3_plain(src, src + hw, src + 2 * hw, dst, 0, hw);
}

/* Restricts the implementation to "ssse3" or "plain" (for tests of every path
 * on one machine). Returns 0, or -1 when the CPU lacks it. Test-only: it
 * changes process-wide state unsynchronised. */
static int imgconv_interleave_select(const char *name)
{
    if (strcmp(name, "plain") == 0) {
        imgconv_interleave_simd = 0;
        return 0;
    }
#ifdef IMGCONV_X86_SHUFFLE
    if (strcmp(name, "ssse3") == 0 && __builtin_cpu_supports("ssse3")) {
        imgconv_interleave_simd = 1;
        return 0;
    }
#endif
    return -1;
}

static const char *imgconv_interleave_impl(void)
{
    return imgconv_interleave_simd ? "ssse3" : "plain";
}

#endif

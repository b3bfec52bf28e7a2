/* CRC32C (Castagnoli, reflected polynomial 0x82F63B78), as used by the
 * imgconv record format (FORMAT.md).
 *
 * Not a header to share: a C source of static definitions (the tables and
 * the dispatch state included) compiled into the one translation unit of
 * ext/_core.pyx, which includes it once and calls imgconv_crc32c_init() at
 * import. Another extension including it would get its own copy.
 *
 * Three implementations behind one entry point, chosen at run time from what
 * the CPU has (compiled with target attributes, so no -m flags are needed and
 * the module loads on any CPU):
 *   - PCLMULQDQ folding for runs of 64 bytes and more, with the SSE4.2 crc32
 *     instruction for the rest;
 *   - the crc32 instruction alone;
 *   - portable slice-by-8 tables.
 * imgconv_crc32c_copy() checksums while it copies, so packing a record reads
 * the pixels once instead of twice. BENCHMARKS.md ("How the kernels got
 * there") has the timings of each implementation.
 */
#ifndef IMGCONV_CRC32C_H
#define IMGCONV_CRC32C_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* x86-64 only: the 64-bit crc32 form does not exist on 32-bit x86. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define IMGCONV_X86_CRC 1
#include <nmmintrin.h>
#include <wmmintrin.h>
#endif

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define IMGCONV_LITTLE_ENDIAN 1
#endif

static uint32_t imgconv_crc32c_table[8][256];
static int imgconv_crc32c_hw = 0;     /* SSE4.2 crc32 instruction */
static int imgconv_crc32c_clmul = 0;  /* and PCLMULQDQ folding for long runs */

static void imgconv_crc32c_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
        imgconv_crc32c_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = imgconv_crc32c_table[0][i];
        for (int t = 1; t < 8; t++) {
            c = imgconv_crc32c_table[0][c & 0xff] ^ (c >> 8);
            imgconv_crc32c_table[t][i] = c;
        }
    }
#ifdef IMGCONV_X86_CRC
    __builtin_cpu_init();
    imgconv_crc32c_hw = __builtin_cpu_supports("sse4.2") ? 1 : 0;
    imgconv_crc32c_clmul = imgconv_crc32c_hw && __builtin_cpu_supports("pclmul") ? 1 : 0;
#endif
}

/* Takes and returns the finalised CRC (0 for an empty input), like zlib. */
static uint32_t imgconv_crc32c_sw(uint32_t crc, const uint8_t *p, size_t n)
{
    const uint32_t (*t)[256] = (const uint32_t (*)[256])imgconv_crc32c_table;
    crc = ~crc;
#ifdef IMGCONV_LITTLE_ENDIAN
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        w ^= crc;
        crc = t[7][w & 0xff] ^ t[6][(w >> 8) & 0xff] ^ t[5][(w >> 16) & 0xff] ^
              t[4][(w >> 24) & 0xff] ^ t[3][(w >> 32) & 0xff] ^
              t[2][(w >> 40) & 0xff] ^ t[1][(w >> 48) & 0xff] ^ t[0][w >> 56];
        p += 8;
        n -= 8;
    }
#endif
    while (n--)
        crc = t[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

#ifdef IMGCONV_X86_CRC
__attribute__((target("sse4.2")))
static uint32_t imgconv_crc32c_sse42(uint32_t crc, const uint8_t *src, uint8_t *dst, size_t n)
{
    /* dst may be NULL: checksum only. */
    uint64_t c = (uint32_t)~crc;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, src, 8);
        c = _mm_crc32_u64(c, w);
        if (dst) {
            memcpy(dst, &w, 8);
            dst += 8;
        }
        src += 8;
        n -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (n--) {
        uint8_t b = *src++;
        c32 = _mm_crc32_u8(c32, b);
        if (dst)
            *dst++ = b;
    }
    return ~c32;
}
#endif

#ifdef IMGCONV_X86_CRC
/* Folding with carry-less multiplication ("Fast CRC Computation for Generic
 * Polynomials Using PCLMULQDQ", Intel, 2009), the scheme zlib's SIMD CRC32
 * uses, with CRC32C's constants: k1..k5 are (x^n mod P) bit-reflected and
 * shifted left by one for n = 4*128+32, 4*128-32, 128+32, 128-32 and 64; P'
 * and mu are P and floor(x^64 / P) reflected over 33 bits. A test derives
 * them again from the polynomial. The crc32 instruction is bound by its
 * latency on one stream; four 128-bit accumulators are not.
 *
 * Takes and returns the raw register (not inverted); processes n bytes,
 * n >= 64 and a multiple of 16, copying them to dst unless dst is NULL. */
__attribute__((target("sse4.2,pclmul")))
static uint32_t imgconv_crc32c_fold(uint32_t state, const uint8_t *src, uint8_t *dst, size_t n)
{
    const __m128i k1k2 = _mm_set_epi64x(0x09e4addf8, 0x0740eef02);
    const __m128i k3k4 = _mm_set_epi64x(0x14cd00bd6, 0x0f20c0dfe);
    const __m128i k5k0 = _mm_set_epi64x(0x0, 0x0dd45aab8);
    const __m128i poly = _mm_set_epi64x(0x0dea713f1, 0x105ec76f1);
    const __m128i mask32 = _mm_setr_epi32(~0, 0, ~0, 0);
    __m128i x0, x1, x2, x3, x4, x5, x6, x7, x8, y5, y6, y7, y8;

    x1 = _mm_loadu_si128((const __m128i *)(src + 0x00));
    x2 = _mm_loadu_si128((const __m128i *)(src + 0x10));
    x3 = _mm_loadu_si128((const __m128i *)(src + 0x20));
    x4 = _mm_loadu_si128((const __m128i *)(src + 0x30));
    if (dst) {
        _mm_storeu_si128((__m128i *)(dst + 0x00), x1);
        _mm_storeu_si128((__m128i *)(dst + 0x10), x2);
        _mm_storeu_si128((__m128i *)(dst + 0x20), x3);
        _mm_storeu_si128((__m128i *)(dst + 0x30), x4);
        dst += 64;
    }
    x1 = _mm_xor_si128(x1, _mm_cvtsi32_si128((int)state));
    src += 64;
    n -= 64;

    /* Four 128-bit lanes, each folded 512 bits forward per step. */
    x0 = k1k2;
    while (n >= 64) {
        x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
        x6 = _mm_clmulepi64_si128(x2, x0, 0x00);
        x7 = _mm_clmulepi64_si128(x3, x0, 0x00);
        x8 = _mm_clmulepi64_si128(x4, x0, 0x00);
        x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
        x2 = _mm_clmulepi64_si128(x2, x0, 0x11);
        x3 = _mm_clmulepi64_si128(x3, x0, 0x11);
        x4 = _mm_clmulepi64_si128(x4, x0, 0x11);
        y5 = _mm_loadu_si128((const __m128i *)(src + 0x00));
        y6 = _mm_loadu_si128((const __m128i *)(src + 0x10));
        y7 = _mm_loadu_si128((const __m128i *)(src + 0x20));
        y8 = _mm_loadu_si128((const __m128i *)(src + 0x30));
        if (dst) {
            _mm_storeu_si128((__m128i *)(dst + 0x00), y5);
            _mm_storeu_si128((__m128i *)(dst + 0x10), y6);
            _mm_storeu_si128((__m128i *)(dst + 0x20), y7);
            _mm_storeu_si128((__m128i *)(dst + 0x30), y8);
            dst += 64;
        }
        x1 = _mm_xor_si128(_mm_xor_si128(x1, x5), y5);
        x2 = _mm_xor_si128(_mm_xor_si128(x2, x6), y6);
        x3 = _mm_xor_si128(_mm_xor_si128(x3, x7), y7);
        x4 = _mm_xor_si128(_mm_xor_si128(x4, x8), y8);
        src += 64;
        n -= 64;
    }

    /* Fold the four lanes into one. */
    x0 = k3k4;
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x2), x5);
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x3), x5);
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x4), x5);

    /* Remaining 16-byte blocks. */
    while (n >= 16) {
        x2 = _mm_loadu_si128((const __m128i *)src);
        if (dst) {
            _mm_storeu_si128((__m128i *)dst, x2);
            dst += 16;
        }
        x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
        x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
        x1 = _mm_xor_si128(_mm_xor_si128(x1, x2), x5);
        src += 16;
        n -= 16;
    }

    /* 128 bits to 64, then Barrett reduction to 32. */
    x2 = _mm_clmulepi64_si128(x1, x0, 0x10);
    x1 = _mm_xor_si128(_mm_srli_si128(x1, 8), x2);
    x0 = k5k0;
    x2 = _mm_srli_si128(x1, 4);
    x1 = _mm_and_si128(x1, mask32);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_xor_si128(x1, x2);
    x0 = poly;
    x2 = _mm_and_si128(x1, mask32);
    x2 = _mm_clmulepi64_si128(x2, x0, 0x10);
    x2 = _mm_and_si128(x2, mask32);
    x2 = _mm_clmulepi64_si128(x2, x0, 0x00);
    x1 = _mm_xor_si128(x1, x2);
    return (uint32_t)_mm_extract_epi32(x1, 1);
}

/* CRC32C over src (copied to dst unless NULL): folding for the bulk, the
 * crc32 instruction for short inputs and the tail. Finalised CRC in and out. */
__attribute__((target("sse4.2,pclmul")))
static uint32_t imgconv_crc32c_clmul_copy(uint32_t crc, const uint8_t *src, uint8_t *dst, size_t n)
{
    uint32_t state = ~crc;
    if (n >= 64) {
        size_t bulk = n & ~(size_t)15;
        state = imgconv_crc32c_fold(state, src, dst, bulk);
        src += bulk;
        if (dst)
            dst += bulk;
        n -= bulk;
    }
    return imgconv_crc32c_sse42(~state, src, dst, n);
}
#endif

static uint32_t imgconv_crc32c(uint32_t crc, const uint8_t *p, size_t n)
{
#ifdef IMGCONV_X86_CRC
    if (imgconv_crc32c_clmul)
        return imgconv_crc32c_clmul_copy(crc, p, NULL, n);
    if (imgconv_crc32c_hw)
        return imgconv_crc32c_sse42(crc, p, NULL, n);
#endif
    return imgconv_crc32c_sw(crc, p, n);
}

/* Copies n bytes from src to dst and returns the CRC32C of them, continuing crc. */
static uint32_t imgconv_crc32c_copy(uint32_t crc, const uint8_t *src, uint8_t *dst, size_t n)
{
#ifdef IMGCONV_X86_CRC
    if (imgconv_crc32c_clmul)
        return imgconv_crc32c_clmul_copy(crc, src, dst, n);
    if (imgconv_crc32c_hw)
        return imgconv_crc32c_sse42(crc, src, dst, n);
#endif
    memcpy(dst, src, n);
    return imgconv_crc32c_sw(crc, src, n);
}

/* Restricts the implementation to "pclmul", "sse4.2" or "slice-by-8" (for
 * tests of every path on one machine). Returns 0, or -1 when the CPU lacks it.
 * Test-only: it changes process-wide state unsynchronised, under any thread
 * computing a CRC at the time. */
static int imgconv_crc32c_select(const char *name)
{
    int hw = 0, clmul = 0;
#ifdef IMGCONV_X86_CRC
    hw = __builtin_cpu_supports("sse4.2") ? 1 : 0;
    clmul = hw && __builtin_cpu_supports("pclmul") ? 1 : 0;
#endif
    if (strcmp(name, "pclmul") == 0) {
        if (!clmul)
            return -1;
        imgconv_crc32c_hw = imgconv_crc32c_clmul = 1;
    } else if (strcmp(name, "sse4.2") == 0) {
        if (!hw)
            return -1;
        imgconv_crc32c_hw = 1;
        imgconv_crc32c_clmul = 0;
    } else if (strcmp(name, "slice-by-8") == 0) {
        imgconv_crc32c_hw = imgconv_crc32c_clmul = 0;
    } else {
        return -1;
    }
    return 0;
}

static const char *imgconv_crc32c_impl(void)
{
    return imgconv_crc32c_clmul ? "pclmul" : imgconv_crc32c_hw ? "sse4.2" : "slice-by-8";
}

#endif

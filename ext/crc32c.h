/* CRC32C (Castagnoli, reflected polynomial 0x82F63B78), as used by the
 * imgconv record format (FORMAT.md).
 *
 * Two implementations behind one entry point:
 *   - the SSE4.2 crc32 instruction, chosen at run time when the CPU has it
 *     (compiled with a target attribute, so no -msse4.2 is needed and the
 *     module still loads on CPUs without it);
 *   - portable slice-by-8 tables otherwise.
 * imgconv_crc32c_copy() checksums while it copies, so packing a record reads
 * the pixels once instead of twice.
 */
#ifndef IMGCONV_CRC32C_H
#define IMGCONV_CRC32C_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define IMGCONV_X86_CRC 1
#include <nmmintrin.h>
#endif

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define IMGCONV_LITTLE_ENDIAN 1
#endif

static uint32_t imgconv_crc32c_table[8][256];
static int imgconv_crc32c_hw = 0;

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

static uint32_t imgconv_crc32c(uint32_t crc, const uint8_t *p, size_t n)
{
#ifdef IMGCONV_X86_CRC
    if (imgconv_crc32c_hw)
        return imgconv_crc32c_sse42(crc, p, NULL, n);
#endif
    return imgconv_crc32c_sw(crc, p, n);
}

/* Copies n bytes from src to dst and returns the CRC32C of them, continuing crc. */
static uint32_t imgconv_crc32c_copy(uint32_t crc, const uint8_t *src, uint8_t *dst, size_t n)
{
#ifdef IMGCONV_X86_CRC
    if (imgconv_crc32c_hw)
        return imgconv_crc32c_sse42(crc, src, dst, n);
#endif
    memcpy(dst, src, n);
    return imgconv_crc32c_sw(crc, src, n);
}

#ifdef IMGCONV_X86_CRC
__attribute__((target("sse4.2")))
static void imgconv_crc32c_copy3_sse42(uint32_t crc[3], const uint8_t *const src[3],
                                       uint8_t *const dst[3], size_t n)
{
    /* The crc32 instruction has a latency of three cycles and a throughput
     * of one, so three independent chains run about three times as fast as one. */
    uint64_t c0 = (uint32_t)~crc[0], c1 = (uint32_t)~crc[1], c2 = (uint32_t)~crc[2];
    const uint8_t *s0 = src[0], *s1 = src[1], *s2 = src[2];
    uint8_t *d0 = dst[0], *d1 = dst[1], *d2 = dst[2];
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w0, w1, w2;
        memcpy(&w0, s0 + i, 8);
        memcpy(&w1, s1 + i, 8);
        memcpy(&w2, s2 + i, 8);
        c0 = _mm_crc32_u64(c0, w0);
        c1 = _mm_crc32_u64(c1, w1);
        c2 = _mm_crc32_u64(c2, w2);
        memcpy(d0 + i, &w0, 8);
        memcpy(d1 + i, &w1, 8);
        memcpy(d2 + i, &w2, 8);
    }
    uint32_t a = (uint32_t)c0, b = (uint32_t)c1, c = (uint32_t)c2;
    for (; i < n; i++) {
        a = _mm_crc32_u8(a, d0[i] = s0[i]);
        b = _mm_crc32_u8(b, d1[i] = s1[i]);
        c = _mm_crc32_u8(c, d2[i] = s2[i]);
    }
    crc[0] = ~a;
    crc[1] = ~b;
    crc[2] = ~c;
}
#endif

/* Three equal-length copies at once, each checksummed, continuing crc[k]. */
static void imgconv_crc32c_copy3(uint32_t crc[3], const uint8_t *const src[3],
                                 uint8_t *const dst[3], size_t n)
{
#ifdef IMGCONV_X86_CRC
    if (imgconv_crc32c_hw) {
        imgconv_crc32c_copy3_sse42(crc, src, dst, n);
        return;
    }
#endif
    for (int k = 0; k < 3; k++)
        crc[k] = imgconv_crc32c_copy(crc[k], src[k], dst[k], n);
}

static const char *imgconv_crc32c_impl(void)
{
    return imgconv_crc32c_hw ? "sse4.2" : "slice-by-8";
}

#endif

/* How fast the AVX2 panel kernel's 6 x 16 micro-tile can run on one core, and what the
 * product around it costs: the loop of `avx2_tile` in src/clip/panels.rs as it was
 * before it prefetched its activations (one prefetch of the half panel 8 inputs ahead,
 * its two vectors, six broadcasts, twelve FMAs per input; blocks of 256 inputs added to
 * the output; -DPREFETCH_A=16 adds the activation prefetch clipscope now has, -DKC=384
 * another block length than clipscope's 256, which every kernel shares for its bits).
 *   gcc -O3 -mavx2 -mfma bench/avx2_tile.c -o /tmp/avx2_tile
 *   /tmp/avx2_tile l1                 one tile, its activations and half panel in L1
 *   /tmp/avx2_tile l2                 (the default) 10 tiles (60 KiB of activations from
 *                                     L2) against 40 blocks of a panel in turn, each as
 *                                     two halves (1.25 MiB of weights in L2)
 *   /tmp/avx2_tile product 800 768 3072          ViT's fc1 at batch 16 as clipscope runs
 *                                                it: a panel at a time, groups of 10 tiles,
 *                                                outputs row-major (`ldc` = outputs)
 *   /tmp/avx2_tile panel-major 800 768 3072      the same into outputs laid out panel by
 *                                                panel (`ldc` = 32): not what a layer
 *                                                needs, a measure of what row-major costs
 *   /tmp/avx2_tile padded 800 768 3072           row-major outputs, rows one cache line
 *                                                longer than the outputs
 *   /tmp/avx2_tile copied 800 768 3072           each panel's outputs copied into a
 *                                                compact buffer, multiplied there and
 *                                                copied back
 *   /tmp/avx2_tile group-outer 800 768 3072      row-major outputs, every panel for one
 *                                                group of 10 tiles before the next group
 *                                                (the order of BLAS libraries' loops)
 * -DLOADS_FIRST reads all of a tile's outputs before writing any (rows 12 KiB apart alias
 * in the store buffer's 4 KiB check); -DHUGE asks for huge pages for every buffer.
 * ROWS is rounded down to whole tiles of 6 (800 -> 798; clipscope splits 800 rows evenly
 * into 134 tiles). One thread; prints GFLOP/s (best of 20 products, or of one long run).
 * Compare with `bench/fma_peak.c`'s AVX2 rate per thread. docs/benchmarks.md has the
 * figures. */
#define _DEFAULT_SOURCE
#define _POSIX_C_SOURCE 199309L
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>

#define PANEL 32
#ifndef KC
#define KC 256
#endif
#define MR 6
#define GROUP 10

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

#ifndef PREFETCH_A
#define A_PAD 0
#else
#define A_PAD (PREFETCH_A * MR) /* the activation prefetch reads this far past a tile */
#endif

static float *filled(size_t n, int mod) {
#ifdef HUGE
    size_t bytes = (n * 4 + (2 << 20) - 1) / (2 << 20) * (2 << 20);
    float *p = aligned_alloc(2 << 20, bytes);
    if (p) madvise(p, bytes, MADV_HUGEPAGE);
#else
    float *p = aligned_alloc(64, (n * 4 + 63) / 64 * 64);
#endif
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < n; i++) p[i] = 1e-3f * (float)(i % mod);
    return p;
}

/* c[r][0..16] += sum over k inputs of a[kk][r] * b[kk][0..16], b's rows PANEL apart. */
__attribute__((noinline)) static void tile(const float *a, int k, const float *b, float *c, long ldc) {
    for (int r = 0; r < MR; r++) {
        _mm_prefetch((const char *)(c + r * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(c + r * ldc) + 60, _MM_HINT_T0);
    }
    __m256 acc[MR][2];
    for (int r = 0; r < MR; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (int kk = 0; kk < k; kk++) {
        _mm_prefetch((const char *)(b + (kk + 8) * PANEL), _MM_HINT_T0);
#ifdef PREFETCH_A
        _mm_prefetch((const char *)(a + (kk + PREFETCH_A) * MR), _MM_HINT_T0);
#endif
        __m256 b0 = _mm256_loadu_ps(b + kk * PANEL), b1 = _mm256_loadu_ps(b + kk * PANEL + 8);
        for (int r = 0; r < MR; r++) {
            __m256 av = _mm256_broadcast_ss(a + kk * MR + r);
            acc[r][0] = _mm256_fmadd_ps(av, b0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(av, b1, acc[r][1]);
        }
    }
#ifdef LOADS_FIRST
    for (int r = 0; r < MR; r++) {
        acc[r][0] = _mm256_add_ps(_mm256_loadu_ps(c + r * ldc), acc[r][0]);
        acc[r][1] = _mm256_add_ps(_mm256_loadu_ps(c + r * ldc + 8), acc[r][1]);
    }
    for (int r = 0; r < MR; r++) {
        _mm256_storeu_ps(c + r * ldc, acc[r][0]);
        _mm256_storeu_ps(c + r * ldc + 8, acc[r][1]);
    }
#else
    for (int r = 0; r < MR; r++) {
        _mm256_storeu_ps(c + r * ldc, _mm256_add_ps(_mm256_loadu_ps(c + r * ldc), acc[r][0]));
        _mm256_storeu_ps(c + r * ldc + 8, _mm256_add_ps(_mm256_loadu_ps(c + r * ldc + 8), acc[r][1]));
    }
#endif
}

/* Tiles of `tiles` x 6 rows against half panels of `blocks` blocks of KC inputs in turn. */
static double in_cache(int tiles, int blocks) {
    float *a = filled((size_t)MR * KC * tiles + A_PAD, 7), *b = filled((size_t)KC * PANEL * blocks + 1024, 5);
    float *c = filled((size_t)MR * PANEL * tiles, 3);
    long reps = 400000000L / (KC * tiles);
    double t = now();
    for (long r = 0; r < reps; r++) {
        const float *block = b + (r % blocks) * KC * PANEL;
        for (int half = 0; half < 2; half++)
            for (int i = 0; i < tiles; i++)
                tile(a + i * MR * KC, KC, block + half * 16, c + i * MR * PANEL + half * 16, PANEL);
    }
    t = now() - t;
    return 2.0 * MR * 16 * KC * tiles * 2 * reps / t / 1e9;
}

enum layout { ROW_MAJOR, PANEL_MAJOR, PADDED, COPIED, GROUP_OUTER };

/* rows x inputs (tile-major activations) times inputs x outputs in panels. */
static double product(int rows, int inputs, int outputs, enum layout layout) {
    int tiles = rows / MR;
    rows = tiles * MR;
    long ldc = layout == PADDED ? outputs + 16 : outputs;
    float *a = filled((size_t)rows * inputs + A_PAD, 7), *w = filled((size_t)inputs * outputs + 256, 5);
    float *c = filled((size_t)rows * ldc, 3), *scratch = filled((size_t)rows * PANEL, 3);
    double best = 1e9;
    for (int rep = 0; rep < 20; rep++) {
        double t = now();
        if (layout == GROUP_OUTER) {
            for (int g = 0; g < tiles; g += GROUP)
                for (int p = 0; p < outputs / PANEL; p++) {
                    const float *wp = w + (long)p * inputs * PANEL;
                    for (int k0 = 0; k0 < inputs; k0 += KC)
                        for (int half = 0; half < 2; half++)
                            for (int i = g; i < g + GROUP && i < tiles; i++)
                                tile(a + (long)i * MR * inputs + k0 * MR, KC, wp + k0 * PANEL + half * 16,
                                     c + (long)i * MR * ldc + p * PANEL + half * 16, ldc);
                }
        } else
        for (int p = 0; p < outputs / PANEL; p++) {
            const float *wp = w + (long)p * inputs * PANEL;
            if (layout == COPIED)
                for (int r = 0; r < rows; r++) memcpy(scratch + r * PANEL, c + r * ldc + p * PANEL, PANEL * 4);
            for (int g = 0; g < tiles; g += GROUP)
                for (int k0 = 0; k0 < inputs; k0 += KC)
                    for (int half = 0; half < 2; half++)
                        for (int i = g; i < g + GROUP && i < tiles; i++) {
                            float *out;
                            long ld = PANEL;
                            if (layout == PANEL_MAJOR)
                                out = c + (long)p * rows * PANEL + (long)i * MR * PANEL + half * 16;
                            else if (layout == COPIED)
                                out = scratch + (long)i * MR * PANEL + half * 16;
                            else
                                out = c + (long)i * MR * ldc + p * PANEL + half * 16, ld = ldc;
                            tile(a + (long)i * MR * inputs + k0 * MR, KC, wp + k0 * PANEL + half * 16, out, ld);
                        }
            if (layout == COPIED)
                for (int r = 0; r < rows; r++) memcpy(c + r * ldc + p * PANEL, scratch + r * PANEL, PANEL * 4);
        }
        t = now() - t;
        if (t < best) best = t;
    }
    return 2.0 * rows * inputs * outputs / best / 1e9;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "l2";
    const char *layouts[] = {"product", "panel-major", "padded", "copied", "group-outer"};
    if (!strcmp(mode, "l1")) {
        printf("l1: %.1f GFLOP/s\n", in_cache(1, 1));
        return 0;
    }
    if (!strcmp(mode, "l2")) {
        printf("l2: %.1f GFLOP/s\n", in_cache(GROUP, 40));
        return 0;
    }
    for (int l = 0; l < 5; l++) {
        if (strcmp(mode, layouts[l]) || argc != 5) continue;
        int rows = atoi(argv[2]), inputs = atoi(argv[3]), outputs = atoi(argv[4]);
        if (rows < MR || inputs <= 0 || inputs % KC || outputs <= 0 || outputs % PANEL) {
            fprintf(stderr, "rows >= 6, inputs a multiple of 256, outputs of 32\n");
            return 2;
        }
        double rate = product(rows, inputs, outputs, (enum layout)l);
        printf("%s %d x %d x %d: %.1f GFLOP/s\n", mode, rows / MR * MR, inputs, outputs, rate);
        return 0;
    }
    fprintf(stderr, "usage: avx2_tile l1 | l2 | product|panel-major|padded|copied ROWS INPUTS OUTPUTS\n");
    return 2;
}

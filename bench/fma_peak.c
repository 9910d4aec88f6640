/* The cores' fused multiply-add peak in f32: each thread runs 12 independent chains of
 * FMAs in registers, enough to fill two FMA pipes of 4-5 cycles' latency.
 *   gcc -O3 -funroll-loops -mavx2 -mfma -pthread bench/fma_peak.c -o /tmp/fma_peak
 *   gcc -O3 -funroll-loops -mavx512f -DWIDE -pthread bench/fma_peak.c -o /tmp/fma_peak
 *   gcc -O3 -funroll-loops -mavx512f -mavx512bf16 -DBF16 -pthread bench/fma_peak.c -o /tmp/bf16_peak
 *     (the same chains of `vdpbf16ps`, 32 bf16 products per instruction: what bf16
 *     gets on a CPU with AVX512-BF16 and no AMX)
 *   /tmp/fma_peak 2        # threads; prints each thread's GFLOP/s and the sum
 * docs/benchmarks.md compares the encoders' rates with it. */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#if defined(BF16)
typedef __m512 vec;
#define LANES 32 /* products per instruction: 16 lanes of bf16 pairs */
#define SET1 _mm512_set1_ps
#define FMA(acc, m, c) _mm512_dpbf16_ps(acc, (__m512bh)_mm512_castps_si512(m), (__m512bh)_mm512_castps_si512(c))
#define FIRST(v) _mm512_cvtss_f32(v)
#elif defined(WIDE)
typedef __m512 vec;
#define LANES 16
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define FIRST(v) _mm512_cvtss_f32(v)
#else
typedef __m256 vec;
#define LANES 8
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define FIRST(v) _mm256_cvtss_f32(v)
#endif

#define CHAINS 12
#define STEPS 100000000L

static void *chains(void *out) {
    vec acc[CHAINS];
    for (int j = 0; j < CHAINS; j++) acc[j] = SET1(j * 0.001f);
    vec m = SET1(0.9999f), c = SET1(0.0001f);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < STEPS; i++)
        for (int j = 0; j < CHAINS; j++) acc[j] = FMA(acc[j], m, c);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    /* A volatile store of the chains' sum keeps the compiler from dropping the loop. */
    volatile float sink = 0;
    for (int j = 0; j < CHAINS; j++) sink += FIRST(acc[j]);
    double s = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
    *(double *)out = STEPS * CHAINS * LANES * 2.0 / s / 1e9;
    return NULL;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 1;
    if (n < 1 || n > 256) n = 1;
    pthread_t t[256];
    double rate[256], total = 0;
    for (int i = 0; i < n; i++) pthread_create(&t[i], NULL, chains, &rate[i]);
    for (int i = 0; i < n; i++) {
        pthread_join(t[i], NULL);
        printf("thread %d: %.1f GFLOP/s\n", i, rate[i]);
        total += rate[i];
    }
#ifdef BF16
    printf("%d threads: %.1f GFLOP/s (vdpbf16ps)\n", n, total);
#else
    printf("%d threads: %.1f GFLOP/s (%d-lane FMA)\n", n, total, LANES);
#endif
    return 0;
}

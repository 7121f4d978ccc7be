/* The attribution's bootstrap (kptrace/attribute.py): the sums of x and of x² over resamples,
 * drawn with replacement, of one sample. An analysis draws tens of millions of picks; numpy
 * drew them as multinomial counts (~120 ns a binomial, holding the GIL) or as index arrays
 * written to memory and read back. Here each pick is drawn and summed in registers. */
#include <stdint.h>

/* SplitMix64 (Steele, Lea and Flood, 2014): a Weyl sequence through a 64-bit mixing function.
 * It passes BigCrush, more than a bootstrap needs; the caller seeds it from its generator. */
static uint64_t next_u64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* A uniform integer below n (0 < n < 2^32) from the 32 random bits x, without bias: the high half
 * of the 32 x 32-bit product, redrawn (from a fresh output's low half) in the rare case its low
 * half falls where low results would be favoured (Lemire, "Fast random integer generation in an
 * interval", 2019). Each 64-bit output gives two picks: half the generator's work per pick. */
static uint32_t below(uint64_t *state, uint32_t x, uint32_t n)
{
    uint64_t product = (uint64_t)x * n;
    uint32_t low = (uint32_t)product;
    if (low < n) {
        uint32_t threshold = -n % n;
        while (low < threshold) {
            product = (uint64_t)(uint32_t)next_u64(state) * n;
            low = (uint32_t)product;
        }
    }
    return (uint32_t)(product >> 32);
}

/* sums[2r] and sums[2r + 1]: the sum of x and of x² over resample r of sample[0..n), each of n
 * picks; all zero when the sample is empty. n < 2^32 (the caller checks). */
void resampled_sums(int64_t n, const double *sample, int64_t replicates, uint64_t seed, double *sums)
{
    uint64_t state = seed;
    uint32_t size = (uint32_t)n;
    for (int64_t r = 0; r < replicates; r++) {
        double sum = 0, squares = 0;
        for (int64_t i = 0; i < n; i += 2) {
            uint64_t bits = next_u64(&state);
            double x = sample[below(&state, (uint32_t)bits, size)];
            sum += x;
            squares += x * x;
            if (i + 1 < n) {
                x = sample[below(&state, (uint32_t)(bits >> 32), size)];
                sum += x;
                squares += x * x;
            }
        }
        sums[2 * r] = sum;
        sums[2 * r + 1] = squares;
    }
}

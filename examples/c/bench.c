/* libaccel's overhead, for `accel bench bindings`: the synchronous ring round trip of a null
 * job and a GEMM through a queue, timed like the Rust and Python sides. Prints one JSON line.
 *
 *   usage: bench ITERATIONS GEMM_N REPS      (ACCEL_SOCKET names the daemon)
 */
#include <accel.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

#define CHECK(call)                                                                \
    do {                                                                           \
        if ((call) < 0) {                                                          \
            fprintf(stderr, "%s failed: %s\n", #call, accel_last_error());         \
            return 1;                                                              \
        }                                                                          \
    } while (0)

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s ITERATIONS GEMM_N REPS\n", argv[0]);
        return 2;
    }
    size_t iters = strtoull(argv[1], NULL, 10), reps = strtoull(argv[3], NULL, 10);
    uint64_t n = strtoull(argv[2], NULL, 10);
    accel_device *dev;
    CHECK(accel_device_open(NULL, 0, &dev));

    accel_ring *ring;
    CHECK(accel_ring_create(dev, 64, &ring));
    accel_op nop = {.kind = ACCEL_OP_KIND_NOP};
    accel_completion c;
    uint64_t *rtt = calloc(iters, sizeof *rtt);
    for (size_t i = 0; i < iters / 10; i++) CHECK(accel_ring_submit_wait(ring, &nop, 5000000000ull, &c));
    for (size_t i = 0; i < iters; i++) {
        uint64_t t = now_ns();
        CHECK(accel_ring_submit_wait(ring, &nop, 5000000000ull, &c));
        rtt[i] = now_ns() - t;
    }
    qsort(rtt, iters, sizeof *rtt, cmp_u64);

    accel_buffer *a, *b, *cc;
    CHECK(accel_buffer_alloc(dev, n * n * 4, &a));
    CHECK(accel_buffer_alloc(dev, n * n * 4, &b));
    CHECK(accel_buffer_alloc(dev, n * n * 4, &cc));
    accel_queue *q;
    CHECK(accel_queue_create(dev, 1, 0, 0, &q));
    accel_op gemm = {.kind = ACCEL_OP_KIND_GEMM_F32, .m = n, .n = n, .k = n,
                     .a = {a, 0, n}, .b = {b, 0, n}, .c = {cc, 0, n}, .alpha = 1.0f, .beta = 0.0f};
    uint64_t *g = calloc(reps + 1, sizeof *g);
    for (size_t r = 0; r <= reps; r++) {
        accel_fence *f;
        uint64_t t = now_ns();
        CHECK(accel_submit(q, &gemm, NULL, 0, NULL, 0, &f));
        CHECK(accel_fence_wait(f, 600000000000ull));
        g[r] = now_ns() - t;
        accel_fence_free(f);
    }
    qsort(g + 1, reps, sizeof *g, cmp_u64); /* g[0] was the warm-up */
    printf("{\"rtt_p50_ns\":%llu,\"rtt_p99_ns\":%llu,\"gemm_median_ns\":%llu}\n",
           (unsigned long long)rtt[iters / 2], (unsigned long long)rtt[iters * 99 / 100],
           (unsigned long long)g[1 + reps / 2]);
    accel_queue_free(q);
    accel_buffer_free(a);
    accel_buffer_free(b);
    accel_buffer_free(cc);
    accel_ring_free(ring);
    accel_device_close(dev);
    free(rtt);
    free(g);
    return 0;
}

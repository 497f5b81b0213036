/* libaccel from C: open a device, share buffers, fill, GEMM, a syncobj dependency, a ring
 * round trip, and the error convention. Exits non-zero on any mismatch.
 *
 *   cc demo.c $(pkg-config --cflags --libs accel) -o demo && ACCEL_SOCKET=... ./demo
 */
#include <accel.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHECK(call)                                                                       \
    do {                                                                                  \
        int rc_ = (call);                                                                 \
        if (rc_ < 0) {                                                                    \
            fprintf(stderr, "%s:%d: %s failed: %d (%s)\n", __FILE__, __LINE__, #call, rc_, \
                    accel_last_error());                                                  \
            exit(1);                                                                      \
        }                                                                                 \
    } while (0)

#define EXPECT(cond)                                                                   \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            fprintf(stderr, "%s:%d: expected %s\n", __FILE__, __LINE__, #cond);        \
            exit(1);                                                                   \
        }                                                                              \
    } while (0)

enum { N = 64 };
static const uint64_t SECOND = 1000000000ull;

/* bfloat16 is the top half of an f32: rounded to nearest even on the way down. */
static uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

int main(void) {
    accel_device *dev;
    CHECK(accel_device_open(NULL, 0, &dev));
    accel_device_info info;
    CHECK(accel_device_get_info(dev, &info));
    printf("accel%u: %s (%s), %u compute units\n", info.minor, info.name, info.driver, info.compute_units);

    /* Buffers are mapped here: writing them is writing device-visible memory. */
    const uint64_t bytes = N * N * sizeof(float);
    accel_buffer *a, *b, *c;
    CHECK(accel_buffer_alloc(dev, bytes, &a));
    CHECK(accel_buffer_alloc(dev, bytes, &b));
    CHECK(accel_buffer_alloc(dev, bytes, &c));
    EXPECT(accel_buffer_size(a) >= bytes);
    float *fa = accel_buffer_data(a), *fb = accel_buffer_data(b), *fc = accel_buffer_data(c);
    for (int i = 0; i < N * N; i++) {
        fa[i] = (float)(i % 7) - 3.0f;
        fb[i] = (float)(i % 5) * 0.5f;
    }

    accel_queue *q;
    CHECK(accel_queue_create(dev, 1, 0, 0, &q));

    /* Fill C with a pattern, then GEMM into it with beta = 0 once the fill is done. */
    accel_op fill = {.kind = ACCEL_OP_KIND_FILL, .pattern = 0x3f800000u /* 1.0f */,
                     .dst = {.buffer = c, .offset = 0, .len = bytes}};
    accel_syncobj *done;
    CHECK(accel_syncobj_create(dev, true, &done));
    accel_signal sig = {.syncobj = done, .point = 1};
    CHECK(accel_submit(q, &fill, NULL, 0, &sig, 1, NULL));
    accel_wait after_fill = {.fence = NULL, .syncobj = done, .point = 1};
    accel_op gemm = {.kind = ACCEL_OP_KIND_GEMM_F32, .m = N, .n = N, .k = N,
                     .a = {a, 0, N}, .b = {b, 0, N}, .c = {c, 0, N}, .alpha = 1.0f, .beta = 0.5f};
    accel_fence *f;
    CHECK(accel_submit(q, &gemm, &after_fill, 1, NULL, 0, &f));
    CHECK(accel_fence_wait(f, 10 * SECOND));
    uint64_t reached;
    CHECK(accel_syncobj_query(done, &reached));
    EXPECT(reached == 1);
    for (int i = 0; i < N; i++) {
        for (int j = 0; j < N; j++) {
            float want = 0.5f; /* beta * the filled 1.0 */
            for (int k = 0; k < N; k++) want += fa[i * N + k] * fb[k * N + j];
            if (fabsf(fc[i * N + j] - want) > 1e-3f * (1.0f + fabsf(want))) {
                fprintf(stderr, "C[%d][%d] = %f, want %f\n", i, j, fc[i * N + j], want);
                return 1;
            }
        }
    }
    printf("gemm %dx%dx%d behind a fill: correct\n", N, N, N);

    /* The same product in bfloat16 (2-byte elements; summed in f32, rounded once). */
    accel_buffer *a16, *b16, *c16;
    CHECK(accel_buffer_alloc(dev, N * N * 2, &a16));
    CHECK(accel_buffer_alloc(dev, N * N * 2, &b16));
    CHECK(accel_buffer_alloc(dev, N * N * 2, &c16));
    uint16_t *ha = accel_buffer_data(a16), *hb = accel_buffer_data(b16), *hc = accel_buffer_data(c16);
    for (int i = 0; i < N * N; i++) {
        ha[i] = to_bf16(fa[i]); /* small integers and halves: exact */
        hb[i] = to_bf16(fb[i]);
    }
    accel_op bf16 = {.kind = ACCEL_OP_KIND_GEMM_BF16, .m = N, .n = N, .k = N,
                     .a = {a16, 0, N}, .b = {b16, 0, N}, .c = {c16, 0, N}, .alpha = 1.0f, .beta = 0.0f};
    accel_fence *f16;
    CHECK(accel_submit(q, &bf16, NULL, 0, NULL, 0, &f16));
    CHECK(accel_fence_wait(f16, 10 * SECOND));
    accel_fence_free(f16);
    for (int i = 0; i < N * N; i++) {
        if (hc[i] != to_bf16(fc[i] - 0.5f)) {
            fprintf(stderr, "bf16 C[%d] = 0x%04x, want 0x%04x\n", i, hc[i], to_bf16(fc[i] - 0.5f));
            return 1;
        }
    }
    accel_buffer_free(a16);
    accel_buffer_free(b16);
    accel_buffer_free(c16);
    printf("gemm bf16 %dx%dx%d: correct to the bit\n", N, N, N);

    /* A fence exported as an eventfd. */
    int efd;
    CHECK(accel_fence_sync_fd(f, &efd));
    uint64_t one = 0;
    EXPECT(read(efd, &one, sizeof one) == sizeof one && one == 1);
    close(efd);
    /* The device's own sync file: the job is done, so there is nothing to wait for (-1, as
     * Vulkan has it); a device that makes none would say -EOPNOTSUPP while a job runs. */
    int native = 0;
    CHECK(accel_fence_native_sync_file(f, &native));
    EXPECT(native == -1);
    accel_fence_free(f);

    /* Share a buffer with a second connection: same pages. */
    accel_device *dev2;
    CHECK(accel_device_open(NULL, 0, &dev2));
    int fd;
    CHECK(accel_buffer_export(a, &fd));
    accel_buffer *a2;
    CHECK(accel_buffer_import(dev2, fd, &a2));
    /* Another runtime's device memory (a Vulkan or CUDA export) imports into a device
     * region; the cpu device has none, and says so. */
    accel_buffer *ext;
    EXPECT(accel_buffer_import_external(dev2, fd, 1, bytes, &ext) == -EINVAL);
    close(fd);
    EXPECT(memcmp(accel_buffer_data(a2), fa, bytes) == 0);
    fa[0] = 42.0f;
    EXPECT(((float *)accel_buffer_data(a2))[0] == 42.0f);

    /* The ring: a synchronous null job and a batch. */
    accel_ring *ring;
    CHECK(accel_ring_create(dev, 64, &ring));
    accel_op nop = {.kind = ACCEL_OP_KIND_NOP};
    accel_completion cqe;
    CHECK(accel_ring_submit_wait(ring, &nop, SECOND, &cqe));
    EXPECT(cqe.result == 0 && cqe.seqno > 0);
    for (uint64_t i = 0; i < 32; i++) CHECK(accel_ring_push(ring, &nop, 100 + i));
    CHECK(accel_ring_flush(ring));
    accel_completion cqes[32];
    int got = 0;
    while (got < 32) {
        int n = accel_ring_wait(ring, cqes + got, 32 - got, 1, SECOND);
        CHECK(n);
        got += n;
    }
    for (int i = 0; i < 32; i++) EXPECT(cqes[i].user_data == 100u + i && cqes[i].result == 0);
    /* Waiting by spinning (as CUDA's spin-wait) and by blocking at once. */
    CHECK(accel_ring_set_wait_mode(ring, ACCEL_WAIT_SPIN));
    CHECK(accel_ring_submit_wait(ring, &nop, SECOND, &cqe));
    CHECK(accel_ring_set_wait_mode(ring, ACCEL_WAIT_BLOCK));
    CHECK(accel_ring_submit_wait(ring, &nop, SECOND, &cqe));
    EXPECT(accel_ring_set_wait_mode(ring, 7) == -EINVAL);
    CHECK(accel_ring_set_wait_mode(ring, ACCEL_WAIT_AUTO));
    printf("ring: 1 + 32 null jobs, then spinning and blocking waits\n");

    /* drm_syncobj semantics: out-of-order points, arrays, wait-for-submit, sync files, and
     * a ring entry that waits for a point before it is submitted. */
    accel_syncobj *tl, *bin;
    CHECK(accel_syncobj_create(dev, true, &tl));
    CHECK(accel_syncobj_create_flags(dev, ACCEL_SYNCOBJ_CREATE_SIGNALED, &bin));
    const accel_syncobj *objs[2] = {tl, bin};
    uint64_t points[2] = {5, 0};
    CHECK(accel_syncobj_timeline_signal(dev, objs, points, 1));
    points[0] = 3; /* below the last point: accepted, as in DRM */
    CHECK(accel_syncobj_timeline_signal(dev, objs, points, 1));
    uint64_t values[2];
    CHECK(accel_syncobj_timeline_query(dev, objs, values, 2, 0));
    EXPECT(values[0] == 5 && values[1] == 0);
    uint32_t first = 99;
    points[0] = 7;
    EXPECT(accel_syncobj_timeline_wait(dev, objs, points, 1, 0, 0, NULL) == -EINVAL);
    EXPECT(accel_syncobj_timeline_wait(dev, objs, points, 1, ACCEL_SYNCOBJ_WAIT_FOR_SUBMIT, 0, NULL) == -ETIME);
    CHECK(accel_syncobj_timeline_wait(dev, objs, points, 2, ACCEL_SYNCOBJ_WAIT_FOR_SUBMIT | ACCEL_SYNCOBJ_WAIT_RELATIVE, SECOND, &first));
    EXPECT(first == 1); /* the binary one was signalled at creation */
    accel_syncobj *gate;
    CHECK(accel_syncobj_create(dev, true, &gate));
    const accel_syncobj *gates[1] = {gate}, *tls[1] = {tl};
    uint64_t gate_point = 1, tl_point = 8;
    CHECK(accel_ring_push_sync(ring, gates, &gate_point, 1, tls, &tl_point, 1, 7));
    CHECK(accel_ring_flush(ring));
    /* The ring is asynchronous: wait until the daemon has taken the entry (point 8 submitted). */
    CHECK(accel_syncobj_timeline_wait(dev, tls, &tl_point, 1, ACCEL_SYNCOBJ_WAIT_AVAILABLE | ACCEL_SYNCOBJ_WAIT_RELATIVE,
                                      SECOND, NULL));
    int sync_file;
    CHECK(accel_syncobj_export_sync_file(tl, 8, &sync_file));
    CHECK(accel_syncobj_timeline_signal(dev, gates, &gate_point, 1));
    CHECK(accel_syncobj_timeline_wait(dev, tls, &tl_point, 1, ACCEL_SYNCOBJ_WAIT_RELATIVE, SECOND, NULL));
    EXPECT(accel_ring_wait(ring, &cqe, 1, 1, SECOND) == 1 && cqe.user_data == 7 && cqe.result == 0);
    CHECK(accel_syncobj_import_sync_file(bin, 0, sync_file));
    close(sync_file);
    CHECK(accel_syncobj_timeline_wait(dev, objs + 1, NULL, 1, 0, 0, NULL));
    printf("syncobjs: out-of-order points, wait-for-submit, a ring sync entry, a sync file\n");
    accel_syncobj_free(gate);
    accel_syncobj_free(bin);
    accel_syncobj_free(tl);

    /* A program: the cpu device's builtin axpy, y = 2·x + y over 64 floats. */
    accel_program *lib;
    CHECK(accel_program_load(dev, "builtin", NULL, 0, &lib));
    accel_buffer *x, *y;
    CHECK(accel_buffer_alloc(dev, 64 * sizeof(float), &x));
    CHECK(accel_buffer_alloc(dev, 64 * sizeof(float), &y));
    for (int i = 0; i < 64; i++) {
        ((float *)accel_buffer_data(x))[i] = (float)i;
        ((float *)accel_buffer_data(y))[i] = 1.0f;
    }
    accel_op axpy = {.kind = ACCEL_OP_KIND_LAUNCH, .program = lib, .grid = {1, 1, 1}, .n_args = 4};
    CHECK(accel_program_entry(lib, "axpy", &axpy.entry));
    axpy.args[0] = (accel_arg){.kind = ACCEL_ARG_KIND_U64, .u = 64};
    axpy.args[1] = (accel_arg){.kind = ACCEL_ARG_KIND_F32, .f = 2.0f};
    axpy.args[2] = (accel_arg){.kind = ACCEL_ARG_KIND_BUFFER, .view = {.buffer = x, .offset = 0, .len = 256}};
    axpy.args[3] = (accel_arg){.kind = ACCEL_ARG_KIND_BUFFER, .view = {.buffer = y, .offset = 0, .len = 256}};
    accel_fence *launched;
    CHECK(accel_submit(q, &axpy, NULL, 0, NULL, 0, &launched));
    CHECK(accel_fence_wait(launched, 10 * SECOND));
    for (int i = 0; i < 64; i++) EXPECT(((float *)accel_buffer_data(y))[i] == 2.0f * i + 1.0f);
    EXPECT(accel_program_load(dev, "builtin", (const uint8_t *)"x", 1, &lib) == -EINVAL);
    printf("launch: builtin axpy over 64 floats\n");
    accel_fence_free(launched);
    accel_buffer_free(x);
    accel_buffer_free(y);
    accel_program_free(lib);

    /* Errors: negative errno plus a message; nothing changes. */
    accel_op bad = {.kind = ACCEL_OP_KIND_FILL, .pattern = 0, .dst = {.buffer = c, .offset = bytes, .len = 4}};
    int rc = accel_submit(q, &bad, NULL, 0, NULL, 0, NULL);
    EXPECT(rc == -ERANGE);
    EXPECT(strstr(accel_last_error(), "ERANGE") != NULL);
    EXPECT(accel_buffer_alloc(dev, 0, &a2) == -EINVAL);
    EXPECT(accel_device_open(NULL, 99, &dev2) == -ENODEV);
    EXPECT(accel_submit(NULL, &nop, NULL, 0, NULL, 0, NULL) == -EINVAL);
    printf("errors: %s\n", accel_last_error());

    accel_ring_free(ring);
    accel_buffer_free(a2);
    accel_syncobj_free(done);
    accel_queue_free(q);
    accel_buffer_free(a);
    accel_buffer_free(b);
    accel_buffer_free(c);
    accel_device_close(dev2);
    accel_device_close(dev);
    printf("demo OK\n");
    return 0;
}

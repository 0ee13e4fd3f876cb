/*
 * remote_client: a CUDA driver API program for the remote vGPU's fault tests, built against
 * NVIDIA's cuda.h and linked with -lcuda (the client stub under tensor-fusion run --remote).
 *
 * usage: remote_client hold MIB      allocate MIB MiB, print "held", then sleep until killed
 *        remote_client wait          allocate 1 MiB, print "ready", wait for a line on stdin,
 *                                    then time one synchronous call: "rc NAME ms MS"
 *        remote_client oom CHUNK_MIB allocate CHUNK_MIB MiB chunks until one fails:
 *                                    "allocated N then NAME"
 */
#include <cuda.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CHECK(call)                                                                   \
    do {                                                                              \
        CUresult rc_ = (call);                                                        \
        if (rc_ != CUDA_SUCCESS) {                                                    \
            const char *name_ = "?";                                                  \
            cuGetErrorName(rc_, &name_);                                              \
            fprintf(stderr, "%s:%d: %s failed: %s (%d)\n", __FILE__, __LINE__, #call, \
                    name_, (int)rc_);                                                 \
            return 1;                                                                 \
        }                                                                             \
    } while (0)

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    CUdevice dev;
    CUcontext ctx;
    CHECK(cuInit(0));
    CHECK(cuDeviceGet(&dev, 0));
    CHECK(cuDevicePrimaryCtxRetain(&ctx, dev));
    CHECK(cuCtxSetCurrent(ctx));
    if (!strcmp(argv[1], "hold") && argc > 2) {
        size_t bytes = (size_t)atol(argv[2]) << 20;
        CUdeviceptr p;
        CHECK(cuMemAlloc(&p, bytes));
        CHECK(cuMemsetD8(p, 0x5a, bytes));
        CHECK(cuCtxSynchronize());
        printf("held\n");
        fflush(stdout);
        for (;;) pause();
    }
    if (!strcmp(argv[1], "wait")) {
        CUdeviceptr p;
        CHECK(cuMemAlloc(&p, 1 << 20));
        printf("ready\n");
        fflush(stdout);
        char line[64];
        if (!fgets(line, sizeof line, stdin)) return 3;
        double t0 = now_ms();
        CUresult rc = cuCtxSynchronize();
        double ms = now_ms() - t0;
        const char *name = "?";
        cuGetErrorName(rc, &name);
        printf("rc %s ms %.1f\n", name, ms);
        return 0;
    }
    if (!strcmp(argv[1], "oom") && argc > 2) {
        size_t bytes = (size_t)atol(argv[2]) << 20;
        int n = 0;
        for (;;) {
            CUdeviceptr p;
            CUresult rc = cuMemAlloc(&p, bytes);
            if (rc != CUDA_SUCCESS) {
                const char *name = "?";
                cuGetErrorName(rc, &name);
                size_t free_b = 0, total_b = 0;
                cuMemGetInfo(&free_b, &total_b);
                printf("allocated %d then %s, total %zu MiB\n", n, name, total_b >> 20);
                return 0;
            }
            n++;
            if (n > 100000) return 4;
        }
    }
    return 2;
}

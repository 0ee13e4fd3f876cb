/*
 * A small ACL program: allocate, copy, launch, copy back, check. Built against the ACL subset
 * (bindings/ascend-sys/include/acl_subset.h) and linked with -lascendcl.
 *
 *   acl_vector_add KERNELS N          vector add of N floats, every element checked
 *   acl_vector_add --probe CHUNK_MIB  allocate CHUNK_MIB chunks until the runtime refuses;
 *                                     prints what it got and what aclrtGetMemInfo reports
 *   acl_vector_add --hold MIB         allocate MIB, say HELD, and wait to be killed
 *   acl_vector_add KERNELS --busy COUNT MS
 *                                     COUNT tf_busy kernels of MS ms, each waited for (a loop
 *                                     whose steps depend on each other); prints the wall time
 */
#include <time.h>
#include <unistd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "acl_subset.h"

#define CHECK(call)                                                                        \
    do {                                                                                   \
        aclError e_ = (call);                                                              \
        if (e_ != ACL_SUCCESS) {                                                           \
            fprintf(stderr, "%s failed: %d (%s)\n", #call, e_, aclGetRecentErrMsg());      \
            exit(1);                                                                       \
        }                                                                                  \
    } while (0)

/* The argument block of tf_vector_add_f32(a, b, c, n): the parameters as a C struct. */
struct add_args {
    void *a, *b, *c;
    uint32_t n;
};

static int probe(size_t chunk_mib) {
    size_t chunk = chunk_mib << 20, got = 0;
    void *p;
    for (;;) {
        aclError e = aclrtMalloc(&p, chunk, ACL_MEM_MALLOC_HUGE_FIRST);
        if (e != ACL_SUCCESS) {
            printf("REFUSED %d\n", e);
            break;
        }
        got += chunk;
        if (got > ((size_t)1 << 40)) break;
    }
    size_t free_b = 0, total_b = 0;
    CHECK(aclrtGetMemInfo(ACL_HBM_MEM, &free_b, &total_b));
    printf("ALLOCATED %zu\nMEMINFO_TOTAL %zu\nMEMINFO_FREE %zu\n", got, total_b, free_b);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s KERNELS N | --probe CHUNK_MIB\n", argv[0]);
        return 2;
    }
    CHECK(aclInit(NULL));
    uint32_t count = 0;
    CHECK(aclrtGetDeviceCount(&count));
    if (count == 0) {
        fprintf(stderr, "no NPU\n");
        return 1;
    }
    CHECK(aclrtSetDevice(0));
    size_t free_b = 0, total_b = 0;
    CHECK(aclrtGetMemInfo(ACL_HBM_MEM, &free_b, &total_b));
    printf("%u NPUs; device 0: %s, %zu MiB\n", count, aclrtGetSocName(), total_b >> 20);
    if (strcmp(argv[1], "--probe") == 0) return probe((size_t)atol(argv[2]));
    if (strcmp(argv[1], "--hold") == 0) {
        void *p;
        CHECK(aclrtMalloc(&p, (size_t)atol(argv[2]) << 20, ACL_MEM_MALLOC_HUGE_FIRST));
        printf("HELD\n");
        fflush(stdout);
        sleep(60);
        return 0;
    }

    aclrtStream stream;
    CHECK(aclrtCreateStream(&stream));
    aclrtBinHandle bin;
    CHECK(aclrtBinaryLoadFromFile(argv[1], NULL, &bin));
    if (strcmp(argv[2], "--busy") == 0 && argc == 5) {
        aclrtFuncHandle busy;
        CHECK(aclrtBinaryGetFunction(bin, "tf_busy", &busy));
        uint64_t ns = (uint64_t)atol(argv[4]) * 1000000ull;
        void *dargs;
        CHECK(aclrtMalloc(&dargs, sizeof ns, ACL_MEM_MALLOC_HUGE_FIRST));
        CHECK(aclrtMemcpy(dargs, sizeof ns, &ns, sizeof ns, ACL_MEMCPY_HOST_TO_DEVICE));
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (long i = 0; i < atol(argv[3]); i++) {
            CHECK(aclrtLaunchKernel(busy, 1, dargs, sizeof ns, stream));
            CHECK(aclrtSynchronizeStream(stream));
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        printf("BUSY_WALL_MS %.1f\n",
               (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6);
        return 0;
    }
    uint32_t n = (uint32_t)atol(argv[2]);
    aclrtFuncHandle add;
    CHECK(aclrtBinaryGetFunction(bin, "tf_vector_add_f32", &add));

    size_t bytes = (size_t)n * sizeof(float);
    float *ha = malloc(bytes), *hb = malloc(bytes), *hc = malloc(bytes);
    for (uint32_t i = 0; i < n; i++) {
        ha[i] = (float)i * 0.5f;
        hb[i] = 3.0f - (float)i;
    }
    void *da, *db, *dc, *dargs;
    CHECK(aclrtMalloc(&da, bytes, ACL_MEM_MALLOC_HUGE_FIRST));
    CHECK(aclrtMalloc(&db, bytes, ACL_MEM_MALLOC_HUGE_FIRST));
    CHECK(aclrtMalloc(&dc, bytes, ACL_MEM_MALLOC_HUGE_FIRST));
    CHECK(aclrtMemcpy(da, bytes, ha, bytes, ACL_MEMCPY_HOST_TO_DEVICE));
    CHECK(aclrtMemcpyAsync(db, bytes, hb, bytes, ACL_MEMCPY_HOST_TO_DEVICE, stream));
    CHECK(aclrtMemset(dc, bytes, 0xff, bytes));

    struct add_args args = {da, db, dc, n};
    CHECK(aclrtMalloc(&dargs, sizeof args, ACL_MEM_MALLOC_HUGE_FIRST));
    CHECK(aclrtMemcpy(dargs, sizeof args, &args, sizeof args, ACL_MEMCPY_HOST_TO_DEVICE));

    aclrtEvent start, end;
    CHECK(aclrtCreateEvent(&start));
    CHECK(aclrtCreateEvent(&end));
    CHECK(aclrtRecordEvent(start, stream));
    CHECK(aclrtLaunchKernel(add, 8, dargs, sizeof args, stream));
    CHECK(aclrtRecordEvent(end, stream));
    CHECK(aclrtSynchronizeStream(stream));
    float ms = -1;
    CHECK(aclrtEventElapsedTime(&ms, start, end));

    CHECK(aclrtMemcpy(hc, bytes, dc, bytes, ACL_MEMCPY_DEVICE_TO_HOST));
    for (uint32_t i = 0; i < n; i++) {
        if (hc[i] != ha[i] + hb[i]) {
            fprintf(stderr, "element %u: %f != %f + %f\n", i, hc[i], ha[i], hb[i]);
            return 1;
        }
    }
    printf("OK %u elements checked (kernel %.3f ms)\n", n, ms);
    CHECK(aclrtFree(da));
    CHECK(aclrtFree(db));
    CHECK(aclrtFree(dc));
    CHECK(aclrtFree(dargs));
    CHECK(aclrtDestroyEvent(start));
    CHECK(aclrtDestroyEvent(end));
    CHECK(aclrtBinaryUnLoad(bin));
    CHECK(aclrtDestroyStream(stream));
    CHECK(aclrtResetDevice(0));
    CHECK(aclFinalize());
    return 0;
}

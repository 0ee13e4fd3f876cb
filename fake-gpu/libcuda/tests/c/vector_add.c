/*
 * vector_add: a CUDA driver API program, built against NVIDIA's real cuda.h and linked with
 * -lcuda. It loads the project's PTX (hal/kernels/tf_kernels.ptx), adds two vectors on device 0,
 * checks every element, and times the kernel with events. The same program and PTX run on a real
 * GPU and on tensor-fusion's simulated GPU.
 *
 * usage: vector_add PTX_FILE [N]
 */
#include <cuda.h>
#include "read_ptx.h"
#include <stdio.h>
#include <stdlib.h>

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

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s PTX_FILE [N]\n", argv[0]);
        return 2;
    }
    unsigned int n = argc > 2 ? (unsigned int)strtoul(argv[2], NULL, 10) : 1000003u;
    char *ptx = read_file(argv[1]);
    if (!ptx) { fprintf(stderr, "cannot read %s\n", argv[1]); return 2; }

    CHECK(cuInit(0));
    int count = 0, version = 0;
    CHECK(cuDeviceGetCount(&count));
    CHECK(cuDriverGetVersion(&version));
    CUdevice dev;
    CHECK(cuDeviceGet(&dev, 0));
    char name[256];
    CHECK(cuDeviceGetName(name, sizeof name, dev));
    size_t total = 0;
    CHECK(cuDeviceTotalMem(&total, dev));
    int sms = 0;
    CHECK(cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev));
    printf("devices %d, driver %d, device 0: %s, %zu MiB, %d SMs\n", count, version, name,
           total >> 20, sms);

    CUcontext ctx;
    CHECK(cuDevicePrimaryCtxRetain(&ctx, dev));
    CHECK(cuCtxSetCurrent(ctx));
    CUmodule mod;
    CHECK(cuModuleLoadData(&mod, ptx));
    CUfunction add;
    CHECK(cuModuleGetFunction(&add, mod, "tf_vector_add_f32"));

    size_t bytes = (size_t)n * sizeof(float);
    float *a = malloc(bytes), *b = malloc(bytes), *c = malloc(bytes);
    for (unsigned int i = 0; i < n; i++) {
        a[i] = (float)i * 0.5f;
        b[i] = 3.0f - (float)(i % 1000);
        c[i] = -1.0f;
    }
    CUdeviceptr da, db, dc;
    CHECK(cuMemAlloc(&da, bytes));
    CHECK(cuMemAlloc(&db, bytes));
    CHECK(cuMemAlloc(&dc, bytes));
    CUstream stream;
    CHECK(cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING));
    CHECK(cuMemcpyHtoDAsync(da, a, bytes, stream));
    CHECK(cuMemcpyHtoDAsync(db, b, bytes, stream));
    CHECK(cuMemsetD32Async(dc, 0, n, stream));

    CUevent start, stop;
    CHECK(cuEventCreate(&start, CU_EVENT_DEFAULT));
    CHECK(cuEventCreate(&stop, CU_EVENT_DEFAULT));
    unsigned int block = 256, grid = (n + block - 1) / block;
    void *params[] = {&da, &db, &dc, &n};
    CHECK(cuEventRecord(start, stream));
    CHECK(cuLaunchKernel(add, grid, 1, 1, block, 1, 1, 0, stream, params, NULL));
    CHECK(cuEventRecord(stop, stream));
    CHECK(cuMemcpyDtoHAsync(c, dc, bytes, stream));
    CHECK(cuStreamSynchronize(stream));
    float ms = 0;
    CHECK(cuEventElapsedTime(&ms, start, stop));

    unsigned int bad = 0;
    for (unsigned int i = 0; i < n; i++) {
        if (c[i] != a[i] + b[i]) {
            if (bad < 5) fprintf(stderr, "element %u: %f != %f\n", i, c[i], a[i] + b[i]);
            bad++;
        }
    }
    size_t free_b = 0, total_b = 0;
    CHECK(cuMemGetInfo(&free_b, &total_b));
    CHECK(cuMemFree(da));
    CHECK(cuMemFree(db));
    CHECK(cuMemFree(dc));
    CHECK(cuEventDestroy(start));
    CHECK(cuEventDestroy(stop));
    CHECK(cuStreamDestroy(stream));
    CHECK(cuModuleUnload(mod));
    CHECK(cuDevicePrimaryCtxRelease(dev));
    if (bad) {
        printf("FAILED: %u of %u elements wrong\n", bad, n);
        return 1;
    }
    printf("OK %u elements checked, kernel %.3f ms, %zu of %zu MiB free during the run\n", n, ms,
           free_b >> 20, total_b >> 20);
    return 0;
}

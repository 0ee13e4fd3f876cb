/*
 * procaddr_vector_add: reaches the CUDA driver the way the CUDA 12 runtime does. It dlopens
 * libcuda.so.1, looks up ONLY cuGetProcAddress_v2 with dlsym, and fetches every other entry
 * point through it (types from NVIDIA's cudaTypedefs.h). Then it runs vector add through the
 * project's PTX and checks every element.
 *
 * usage: procaddr_vector_add PTX_FILE [N]
 */
#include <cuda.h>
#include "read_ptx.h"
#include <cudaTypedefs.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

static PFN_cuGetProcAddress_v12000 get_proc;

#define LOAD(name, version, flags)                                                            \
    PFN_##name##_v##version p_##name = NULL;                                                  \
    do {                                                                                      \
        CUdriverProcAddressQueryResult st_;                                                   \
        CUresult rc_ = get_proc(#name, (void **)&p_##name, version, flags, &st_);             \
        if (rc_ != CUDA_SUCCESS || !p_##name) {                                               \
            fprintf(stderr, "cuGetProcAddress(%s) failed: %d status %d\n", #name, rc_, st_); \
            return 1;                                                                         \
        }                                                                                     \
    } while (0)

#define CHECK(call)                                                              \
    do {                                                                         \
        CUresult rc_ = (call);                                                   \
        if (rc_ != CUDA_SUCCESS) {                                               \
            fprintf(stderr, "%s:%d: %s failed: %d\n", __FILE__, __LINE__, #call, \
                    (int)rc_);                                                   \
            return 1;                                                            \
        }                                                                        \
    } while (0)

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s PTX_FILE [N]\n", argv[0]);
        return 2;
    }
    unsigned int n = argc > 2 ? (unsigned int)strtoul(argv[2], NULL, 10) : 100000u;
    char *ptx = read_file(argv[1]);
    if (!ptx) return 2;
    void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 1; }
    get_proc = (PFN_cuGetProcAddress_v12000)dlsym(lib, "cuGetProcAddress_v2");
    if (!get_proc) { fprintf(stderr, "no cuGetProcAddress_v2\n"); return 1; }

    LOAD(cuInit, 2000, CU_GET_PROC_ADDRESS_DEFAULT);
    LOAD(cuDeviceGet, 2000, CU_GET_PROC_ADDRESS_DEFAULT);
    LOAD(cuCtxCreate, 3020, CU_GET_PROC_ADDRESS_DEFAULT);
    LOAD(cuMemAlloc, 3020, CU_GET_PROC_ADDRESS_DEFAULT);
    LOAD(cuMemFree, 3020, CU_GET_PROC_ADDRESS_DEFAULT);
    LOAD(cuMemGetInfo, 3020, CU_GET_PROC_ADDRESS_DEFAULT);
    LOAD(cuMemcpyHtoD, 3020, CU_GET_PROC_ADDRESS_DEFAULT);
    LOAD(cuMemcpyDtoH, 3020, CU_GET_PROC_ADDRESS_DEFAULT);
    LOAD(cuModuleLoadData, 2000, CU_GET_PROC_ADDRESS_DEFAULT);
    LOAD(cuModuleGetFunction, 2000, CU_GET_PROC_ADDRESS_DEFAULT);
    LOAD(cuCtxSynchronize, 2000, CU_GET_PROC_ADDRESS_DEFAULT);
    /* The per-thread default stream flavour, as nvcc --default-stream per-thread asks for.
     * (Each lookup passes the CUDA version whose signature the PFN type has.) */
    PFN_cuLaunchKernel_v7000_ptsz p_launch = NULL;
    CHECK(get_proc("cuLaunchKernel", (void **)&p_launch, 12000,
                   CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, NULL));
    /* Something that does not exist must be reported, not crash. */
    void *none = (void *)1;
    CUdriverProcAddressQueryResult st;
    if (get_proc("cuNoSuchFunction", &none, 12000, 0, &st) == CUDA_SUCCESS || none ||
        st != CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND) {
        fprintf(stderr, "unknown symbol was not reported\n");
        return 1;
    }

    CHECK(p_cuInit(0));
    CUdevice dev;
    CHECK(p_cuDeviceGet(&dev, 0));
    CUcontext ctx;
    CHECK(p_cuCtxCreate(&ctx, 0, dev));
    CUmodule mod;
    CHECK(p_cuModuleLoadData(&mod, ptx));
    CUfunction add;
    CHECK(p_cuModuleGetFunction(&add, mod, "tf_vector_add_f32"));
    size_t bytes = (size_t)n * sizeof(float);
    float *a = malloc(bytes), *c = malloc(bytes);
    for (unsigned int i = 0; i < n; i++) a[i] = (float)i;
    CUdeviceptr da, dc;
    CHECK(p_cuMemAlloc(&da, bytes));
    CHECK(p_cuMemAlloc(&dc, bytes));
    CHECK(p_cuMemcpyHtoD(da, a, bytes));
    void *params[] = {&da, &da, &dc, &n};
    CHECK(p_launch(add, (n + 255) / 256, 1, 1, 256, 1, 1, 0, NULL, params, NULL));
    CHECK(p_cuCtxSynchronize());
    CHECK(p_cuMemcpyDtoH(c, dc, bytes));
    for (unsigned int i = 0; i < n; i++) {
        if (c[i] != 2.0f * a[i]) {
            fprintf(stderr, "element %u: %f\n", i, c[i]);
            return 1;
        }
    }
    size_t free_b, total_b;
    CHECK(p_cuMemGetInfo(&free_b, &total_b));
    CHECK(p_cuMemFree(da));
    CHECK(p_cuMemFree(dc));
    printf("OK %u elements checked through cuGetProcAddress, total %zu MiB\n", n, total_b >> 20);
    return 0;
}

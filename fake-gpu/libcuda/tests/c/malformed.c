/*
 * malformed: a tenant that calls the driver with bad arguments on purpose — null, freed,
 * foreign and overflowing pointers and sizes, stale handles, impossible launches — through the
 * CUDA driver API (linked with -lcuda) and NVML (dlopen'ed). Every call must be refused with an
 * error code; none may crash the process or wedge the device. Built against NVIDIA's real
 * cuda.h and nvml.h.
 *
 * usage: malformed PTX_FILE        prints "refused R of N malformed calls"
 */
#include <cuda.h>
#include <dlfcn.h>
#include <nvml.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include "read_ptx.h"

static int total, refused;

/* A malformed call: anything but success counts as refused. */
#define REFUSED(call)                                                                    \
    do {                                                                                 \
        int rc_ = (int)(call);                                                           \
        total++;                                                                         \
        if (rc_ != 0) {                                                                  \
            refused++;                                                                   \
        } else {                                                                         \
            fprintf(stderr, "%s:%d: ACCEPTED: %s\n", __FILE__, __LINE__, #call);         \
        }                                                                                \
    } while (0)

/* A setup call that must succeed. */
#define OK(call)                                                                         \
    do {                                                                                 \
        int rc_ = (int)(call);                                                           \
        if (rc_ != 0) {                                                                  \
            fprintf(stderr, "%s:%d: setup %s failed: %d\n", __FILE__, __LINE__, #call, rc_); \
            return 2;                                                                    \
        }                                                                                \
    } while (0)

typedef nvmlReturn_t (*nvml_init_t)(void);
typedef nvmlReturn_t (*nvml_by_index_t)(unsigned int, nvmlDevice_t *);
typedef nvmlReturn_t (*nvml_by_uuid_t)(const char *, nvmlDevice_t *);
typedef nvmlReturn_t (*nvml_mem_t)(nvmlDevice_t, nvmlMemory_t *);
typedef nvmlReturn_t (*nvml_name_t)(nvmlDevice_t, char *, unsigned int);
typedef nvmlReturn_t (*nvml_util_t)(nvmlDevice_t, nvmlProcessUtilizationSample_t *,
                                    unsigned int *, unsigned long long);
typedef nvmlReturn_t (*nvml_procs_t)(nvmlDevice_t, unsigned int *, nvmlProcessInfo_t *);
typedef nvmlReturn_t (*nvml_rates_t)(nvmlDevice_t, nvmlUtilization_t *);

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s PTX_FILE\n", argv[0]);
        return 2;
    }
    char *ptx = read_file(argv[1]);
    if (!ptx) return 2;
    void *unmapped = (void *)(uintptr_t)0x10;
    CUdeviceptr foreign = (CUdeviceptr)0xdead00000000ull;
    static const char read_only[16] = "read-only bytes";
    char host[64] = {0};

    OK(cuInit(0));
    CUdevice dev;
    OK(cuDeviceGet(&dev, 0));
    CUcontext ctx;
    OK(cuDevicePrimaryCtxRetain(&ctx, dev));
    OK(cuCtxSetCurrent(ctx));
    CUdeviceptr d, freed;
    const size_t MIB = 1 << 20;
    OK(cuMemAlloc(&d, MIB));
    OK(cuMemAlloc(&freed, MIB));
    OK(cuMemFree(freed));
    CUmodule mod, gone_mod;
    OK(cuModuleLoadData(&mod, ptx));
    OK(cuModuleLoadData(&gone_mod, ptx));
    CUfunction busy, add;
    OK(cuModuleGetFunction(&busy, mod, "tf_busy"));
    OK(cuModuleGetFunction(&add, mod, "tf_vector_add_f32"));
    OK(cuModuleUnload(gone_mod));
    CUstream s, gone_stream;
    OK(cuStreamCreate(&s, 0));
    OK(cuStreamCreate(&gone_stream, 0));
    OK(cuStreamDestroy(gone_stream));
    CUevent e, gone_event, never;
    OK(cuEventCreate(&e, 0));
    OK(cuEventCreate(&never, 0));
    OK(cuEventCreate(&gone_event, 0));
    OK(cuEventDestroy(gone_event));
    CUcontext extra_ctx;
    OK(cuCtxCreate(&extra_ctx, 0, dev));
    OK(cuCtxDestroy(extra_ctx));
    OK(cuCtxSetCurrent(ctx));

    /* Copies: null, freed, foreign, unmapped, read-only, overflowing, out of bounds. */
    REFUSED(cuMemcpyHtoD(0, host, 16));
    REFUSED(cuMemcpyHtoD(freed, host, 16));
    REFUSED(cuMemcpyHtoD(foreign, host, 16));
    REFUSED(cuMemcpyHtoD(d, host, SIZE_MAX));
    REFUSED(cuMemcpyHtoD(d + MIB - 8, host, 16));
    REFUSED(cuMemcpyHtoD(d, NULL, 16));
    REFUSED(cuMemcpyHtoD(d, unmapped, 16));
    REFUSED(cuMemcpyDtoH(host, freed, 16));
    REFUSED(cuMemcpyDtoH(host, foreign, 16));
    REFUSED(cuMemcpyDtoH(NULL, d, 16));
    REFUSED(cuMemcpyDtoH(unmapped, d, 16));
    REFUSED(cuMemcpyDtoH((void *)read_only, d, 8));
    REFUSED(cuMemcpyDtoH(host, d, SIZE_MAX));
    REFUSED(cuMemcpyDtoD(d, freed, 16));
    REFUSED(cuMemcpyDtoD(freed, d, 16));
    REFUSED(cuMemcpyDtoD(d, d + 8, MIB));
    REFUSED(cuMemcpy(d, (CUdeviceptr)(uintptr_t)unmapped, 16));
    REFUSED(cuMemcpy((CUdeviceptr)(uintptr_t)unmapped, d, 16));
    REFUSED(cuMemcpyHtoDAsync(freed, host, 16, s));
    REFUSED(cuMemcpyHtoDAsync(d, unmapped, 16, s));
    REFUSED(cuMemcpyDtoHAsync(unmapped, d, 16, s));
    REFUSED(cuMemcpyDtoDAsync(d, freed, 16, s));
    REFUSED(cuMemcpyHtoD(d, host, 16) == CUDA_SUCCESS ? cuMemcpyDtoH(host, d, 16 + MIB) : 1);

    /* 2D copies: overflowing row offsets, pitches narrower than rows, freed and null. */
    CUDA_MEMCPY2D c2;
    memset(&c2, 0, sizeof c2);
    c2.srcMemoryType = CU_MEMORYTYPE_DEVICE;
    c2.srcDevice = d;
    c2.srcPitch = SIZE_MAX / 2;
    c2.dstMemoryType = CU_MEMORYTYPE_HOST;
    c2.dstHost = host;
    c2.dstPitch = 16;
    c2.WidthInBytes = 16;
    c2.Height = 3;
    REFUSED(cuMemcpy2D(&c2));
    c2.srcPitch = 8;
    REFUSED(cuMemcpy2D(&c2));
    c2.srcPitch = 16;
    c2.srcDevice = freed;
    REFUSED(cuMemcpy2D(&c2));
    c2.srcDevice = d;
    c2.dstHost = unmapped;
    REFUSED(cuMemcpy2D(&c2));
    REFUSED(cuMemcpy2D(NULL));
    REFUSED(cuMemcpy2D((const CUDA_MEMCPY2D *)unmapped));

    /* Memsets: freed, foreign, overflowing count × width, past the end. */
    REFUSED(cuMemsetD8(freed, 0, 16));
    REFUSED(cuMemsetD8(foreign, 0, 16));
    REFUSED(cuMemsetD32(d, 0, SIZE_MAX / 2));
    REFUSED(cuMemsetD16(d, 0, MIB));
    REFUSED(cuMemsetD8Async(freed, 0, 16, s));
    REFUSED(cuMemsetD32Async(d, 0, SIZE_MAX, s));

    /* Frees and queries of what is not (or no longer) an allocation. */
    REFUSED(cuMemFree(freed));
    REFUSED(cuMemFree(foreign));
    REFUSED(cuMemFree(d + 8));
    REFUSED(cuMemFreeAsync(freed, s));
    REFUSED(cuMemFreeHost(unmapped));
    size_t sz;
    CUdeviceptr base;
    REFUSED(cuMemGetAddressRange(&base, &sz, freed));
    int ordinal;
    REFUSED(cuPointerGetAttribute(&ordinal, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, freed));
    REFUSED(cuPointerGetAttribute(unmapped, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, d));
    REFUSED(cuMemAlloc(NULL, 16));
    REFUSED(cuMemAlloc(&base, SIZE_MAX));
    REFUSED(cuMemAlloc(&base, 0));
    REFUSED(cuMemAlloc((CUdeviceptr *)unmapped, 16));

    /* Launches: empty grids, too many threads, bad argument pointers, endless kernels. */
    unsigned long long ns = 1000;
    void *args[] = {&ns};
    REFUSED(cuLaunchKernel(busy, 0, 1, 1, 1, 1, 1, 0, s, args, NULL));
    REFUSED(cuLaunchKernel(busy, 1, 1, 1, 2048, 1, 1, 0, s, args, NULL));
    REFUSED(cuLaunchKernel(busy, 1, 1, 1, 1, 1, 1, 0, s, (void **)unmapped, NULL));
    void *bad_args[] = {unmapped};
    REFUSED(cuLaunchKernel(busy, 1, 1, 1, 1, 1, 1, 0, s, bad_args, NULL));
    unsigned long long forever = ~0ull;
    void *forever_args[] = {&forever};
    REFUSED(cuLaunchKernel(busy, 1, 1, 1, 1, 1, 1, 0, s, forever_args, NULL));
    unsigned long long minute = 60ull * 1000 * 1000 * 1000;
    void *minute_args[] = {&minute};
    REFUSED(cuLaunchKernel(busy, 1, 1, 1, 1, 1, 1, 0, s, minute_args, NULL));
    REFUSED(cuLaunchKernel(NULL, 1, 1, 1, 1, 1, 1, 0, s, args, NULL));
    REFUSED(cuLaunchKernel(busy, 1, 1, 1, 1, 1, 1, 0, s, NULL, (void **)unmapped));
    size_t small = 1;
    void *extra[] = {CU_LAUNCH_PARAM_BUFFER_POINTER, &ns, CU_LAUNCH_PARAM_BUFFER_SIZE, &small,
                     CU_LAUNCH_PARAM_END};
    REFUSED(cuLaunchKernel(busy, 1, 1, 1, 1, 1, 1, 0, s, NULL, extra));
    REFUSED(cuLaunchKernel(busy, 1, 1, 1, 1, 1, 1, 0, gone_stream, args, NULL));
    REFUSED(cuLaunchKernel(add, 4, 1, 1, 256, 1, 1, 0, s, NULL, NULL));

    /* Stale and bogus handles. */
    REFUSED(cuStreamSynchronize(gone_stream));
    REFUSED(cuEventRecord(gone_event, s));
    float ms;
    REFUSED(cuEventElapsedTime(&ms, never, never));
    CUfunction f;
    REFUSED(cuModuleGetFunction(&f, mod, "no_such_kernel"));
    REFUSED(cuModuleGetFunction(&f, gone_mod, "tf_busy"));
    REFUSED(cuModuleLoadData(&gone_mod, NULL));
    REFUSED(cuModuleLoadData(&gone_mod, "this is not PTX"));
    REFUSED(cuModuleLoadData(&gone_mod, unmapped));
    REFUSED(cuModuleUnload(gone_mod));
    REFUSED(cuCtxDestroy(extra_ctx));
    REFUSED(cuCtxSetCurrent((CUcontext)unmapped));
    REFUSED(cuDeviceGet(&dev, 99));
    REFUSED(cuDeviceGetName(NULL, 10, 0));
    REFUSED(cuDeviceGetName((char *)unmapped, 10, 0));
    REFUSED(cuDeviceGetAttribute(&ordinal, (CUdevice_attribute)9999, 0));
    REFUSED(cuStreamCreate(NULL, 0));
    REFUSED(cuGetProcAddress("cuMemAlloc", NULL, 12000, 0, NULL));
    REFUSED(cuGetProcAddress((const char *)unmapped, (void **)&f, 12000, 0, NULL));

    /* NVML, through dlopen as monitoring tools do. */
    void *nvml = dlopen("libnvidia-ml.so.1", RTLD_NOW);
    if (!nvml) {
        fprintf(stderr, "dlopen libnvidia-ml.so.1: %s\n", dlerror());
        return 2;
    }
    OK(((nvml_init_t)dlsym(nvml, "nvmlInit_v2"))());
    nvml_by_index_t by_index = (nvml_by_index_t)dlsym(nvml, "nvmlDeviceGetHandleByIndex_v2");
    nvml_by_uuid_t by_uuid = (nvml_by_uuid_t)dlsym(nvml, "nvmlDeviceGetHandleByUUID");
    nvml_mem_t mem = (nvml_mem_t)dlsym(nvml, "nvmlDeviceGetMemoryInfo");
    nvml_name_t name = (nvml_name_t)dlsym(nvml, "nvmlDeviceGetName");
    nvml_util_t util = (nvml_util_t)dlsym(nvml, "nvmlDeviceGetProcessUtilization");
    nvml_procs_t procs = (nvml_procs_t)dlsym(nvml, "nvmlDeviceGetComputeRunningProcesses_v3");
    nvml_rates_t rates = (nvml_rates_t)dlsym(nvml, "nvmlDeviceGetUtilizationRates");
    nvmlDevice_t h;
    OK(by_index(0, &h));
    nvmlMemory_t m;
    unsigned int count = 8;
    char buf[96];
    REFUSED(by_index(99, &h));
    REFUSED(by_index(0, NULL));
    REFUSED(by_index(0, (nvmlDevice_t *)unmapped));
    REFUSED(by_uuid("not-a-uuid", &h));
    REFUSED(by_uuid(NULL, &h));
    REFUSED(by_uuid((const char *)unmapped, &h));
    REFUSED(mem((nvmlDevice_t)unmapped, &m));
    REFUSED(mem(h, NULL));
    REFUSED(mem(h, (nvmlMemory_t *)unmapped));
    REFUSED(name(h, buf, 0));
    REFUSED(name(h, (char *)unmapped, sizeof buf));
    REFUSED(rates(h, (nvmlUtilization_t *)unmapped));
    REFUSED(util(h, (nvmlProcessUtilizationSample_t *)unmapped, &count, 0));
    REFUSED(util(h, NULL, (unsigned int *)unmapped, 0));
    count = 8;
    REFUSED(procs(h, &count, (nvmlProcessInfo_t *)unmapped));
    REFUSED(procs(h, (unsigned int *)unmapped, NULL));

    /* After all that, the context still works. */
    OK(cuMemcpyHtoD(d, host, 16));
    OK(cuMemcpyDtoH(host, d, 16));
    ns = 1000;
    OK(cuLaunchKernel(busy, 1, 1, 1, 1, 1, 1, 0, s, args, NULL));
    OK(cuStreamSynchronize(s));
    OK(cuMemFree(d));
    printf("refused %d of %d malformed calls\n", refused, total);
    return refused == total ? 0 : 1;
}

/*
 * vgpu_probe: exercises a vGPU's limits through the CUDA driver API. Built two ways:
 *   - linked with -lcuda, calling the driver directly;
 *   - with -DVIA_PROCADDR: dlopen("libcuda.so.1"), dlsym of cuGetProcAddress_v2 only, and every
 *     other entry point through it (as the CUDA 12 runtime does).
 * Prints one JSON object.
 *
 * usage: vgpu_probe vram BLOCK_MIB
 *        vgpu_probe busy PTX SECONDS WARMUP_SECONDS KERNEL_US
 *        vgpu_probe graph PTX SECONDS WARMUP_SECONDS KERNEL_US
 *        vgpu_probe churn ITERATIONS SEED
 *        vgpu_probe hold MIB SECONDS
 *        vgpu_probe vmm BLOCK_MIB
 */
#include <cuda.h>
#include "read_ptx.h"
#include <cudaTypedefs.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static struct {
    PFN_cuInit_v2000 Init;
    PFN_cuDeviceGet_v2000 DeviceGet;
    PFN_cuDeviceTotalMem_v3020 DeviceTotalMem;
    PFN_cuDevicePrimaryCtxRetain_v7000 PrimaryCtxRetain;
    PFN_cuCtxSetCurrent_v4000 CtxSetCurrent;
    PFN_cuCtxSynchronize_v2000 CtxSynchronize;
    PFN_cuMemAlloc_v3020 MemAlloc;
    PFN_cuMemFree_v3020 MemFree;
    PFN_cuMemGetInfo_v3020 MemGetInfo;
    PFN_cuModuleLoadData_v2000 ModuleLoadData;
    PFN_cuModuleGetFunction_v2000 ModuleGetFunction;
    PFN_cuLaunchKernel_v4000 LaunchKernel;
    PFN_cuStreamCreate_v2000 StreamCreate;
    PFN_cuStreamSynchronize_v2000 StreamSynchronize;
    PFN_cuStreamBeginCapture_v10010 StreamBeginCapture;
    PFN_cuStreamEndCapture_v10000 StreamEndCapture;
    PFN_cuGraphInstantiateWithFlags_v11040 GraphInstantiate;
    PFN_cuGraphLaunch_v10000 GraphLaunch;
    PFN_cuEventCreate_v2000 EventCreate;
    PFN_cuEventRecord_v2000 EventRecord;
    PFN_cuEventSynchronize_v2000 EventSynchronize;
    PFN_cuMemCreate_v10020 MemCreate;
    PFN_cuMemRelease_v10020 MemRelease;
    PFN_cuMemAddressReserve_v10020 MemAddressReserve;
    PFN_cuMemAddressFree_v10020 MemAddressFree;
    PFN_cuMemMap_v10020 MemMap;
    PFN_cuMemUnmap_v10020 MemUnmap;
} api;

static int load_api(void) {
#ifdef VIA_PROCADDR
    void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 1; }
    PFN_cuGetProcAddress_v12000 gpa = (PFN_cuGetProcAddress_v12000)dlsym(lib, "cuGetProcAddress_v2");
    if (!gpa) { fprintf(stderr, "no cuGetProcAddress_v2\n"); return 1; }
#define GET(field, name, ver)                                                           \
    if (gpa(#name, (void **)&api.field, ver, CU_GET_PROC_ADDRESS_DEFAULT, NULL) != 0) { \
        fprintf(stderr, "cuGetProcAddress(%s) failed\n", #name);                       \
        return 1;                                                                      \
    }
#else
#define GET(field, name, ver) api.field = (void *)&name;
#endif
    GET(Init, cuInit, 2000);
    GET(DeviceGet, cuDeviceGet, 2000);
    GET(DeviceTotalMem, cuDeviceTotalMem, 3020);
    GET(PrimaryCtxRetain, cuDevicePrimaryCtxRetain, 7000);
    GET(CtxSetCurrent, cuCtxSetCurrent, 4000);
    GET(CtxSynchronize, cuCtxSynchronize, 2000);
    GET(MemAlloc, cuMemAlloc, 3020);
    GET(MemFree, cuMemFree, 3020);
    GET(MemGetInfo, cuMemGetInfo, 3020);
    GET(ModuleLoadData, cuModuleLoadData, 2000);
    GET(ModuleGetFunction, cuModuleGetFunction, 2000);
    GET(LaunchKernel, cuLaunchKernel, 4000);
    GET(StreamCreate, cuStreamCreate, 2000);
    GET(StreamSynchronize, cuStreamSynchronize, 2000);
    GET(StreamBeginCapture, cuStreamBeginCapture, 10010);
    GET(StreamEndCapture, cuStreamEndCapture, 10000);
    GET(GraphInstantiate, cuGraphInstantiateWithFlags, 11040);
    GET(GraphLaunch, cuGraphLaunch, 10000);
    GET(EventCreate, cuEventCreate, 2000);
    GET(EventRecord, cuEventRecord, 2000);
    GET(EventSynchronize, cuEventSynchronize, 2000);
    GET(MemCreate, cuMemCreate, 10020);
    GET(MemRelease, cuMemRelease, 10020);
    GET(MemAddressReserve, cuMemAddressReserve, 10020);
    GET(MemAddressFree, cuMemAddressFree, 10020);
    GET(MemMap, cuMemMap, 10020);
    GET(MemUnmap, cuMemUnmap, 10020);
    return 0;
}

#define CHECK(call)                                                                    \
    do {                                                                               \
        CUresult rc_ = (call);                                                         \
        if (rc_ != CUDA_SUCCESS) {                                                     \
            fprintf(stderr, "%s:%d: %s failed: %d\n", __FILE__, __LINE__, #call, rc_); \
            return 1;                                                                  \
        }                                                                              \
    } while (0)

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int vram(size_t block_mib) {
    size_t block = block_mib << 20, total_before = 0, free_before = 0, dev_total = 0;
    CHECK(api.MemGetInfo(&free_before, &total_before));
    CUdevice dev;
    CHECK(api.DeviceGet(&dev, 0));
    CHECK(api.DeviceTotalMem(&dev_total, dev));
    CUdeviceptr *ptrs = calloc(1 << 20, sizeof *ptrs);
    size_t n = 0;
    CUresult last = CUDA_SUCCESS;
    while (n < (1 << 20)) {
        last = api.MemAlloc(&ptrs[n], block);
        if (last != CUDA_SUCCESS) break;
        n++;
    }
    size_t free_full = 0, total_full = 0;
    CHECK(api.MemGetInfo(&free_full, &total_full));
    for (size_t i = 0; i < n; i++) CHECK(api.MemFree(ptrs[i]));
    size_t free_after = 0, total_after = 0;
    CHECK(api.MemGetInfo(&free_after, &total_after));
    printf("{\"allocated\": %zu, \"blocks\": %zu, \"last_error\": %d, \"mem_total\": %zu, "
           "\"mem_free_before\": %zu, \"mem_free_full\": %zu, \"mem_free_after\": %zu, "
           "\"device_total\": %zu}\n",
           n * block, n, (int)last, total_before, free_before, free_full, free_after, dev_total);
    return 0;
}

static int busy(const char *ptx_path, double seconds, double warmup, unsigned long long us, int graph) {
    char *ptx = read_file(ptx_path);
    if (!ptx) { fprintf(stderr, "cannot read %s\n", ptx_path); return 2; }
    CUmodule mod;
    CHECK(api.ModuleLoadData(&mod, ptx));
    CUfunction f;
    CHECK(api.ModuleGetFunction(&f, mod, "tf_busy"));
    CUstream s;
    CHECK(api.StreamCreate(&s, CU_STREAM_NON_BLOCKING));
    unsigned long long ns = us * 1000ull;
    void *params[] = {&ns};
    CUgraphExec exec = NULL;
    if (graph) {
        /* One graph of 4 kernels, launched repeatedly. */
        CUgraph g;
        CHECK(api.StreamBeginCapture(s, CU_STREAM_CAPTURE_MODE_GLOBAL));
        for (int i = 0; i < 4; i++) CHECK(api.LaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, s, params, NULL));
        CHECK(api.StreamEndCapture(s, &g));
        CHECK(api.GraphInstantiate(&exec, g, 0));
    }
    /* Keep two launches in flight, so the device never waits for the host. */
    enum { DEPTH = 2 };
    CUevent ev[DEPTH];
    for (int i = 0; i < DEPTH; i++) CHECK(api.EventCreate(&ev[i], CU_EVENT_DISABLE_TIMING));
    unsigned long long k = graph ? 4 : 1, launched = 0;
    double start = now_s(), t = start;
    unsigned long long counted = 0, total = 0;
    while (t - start < seconds) {
        if (launched >= DEPTH) {
            CHECK(api.EventSynchronize(ev[launched % DEPTH]));
            t = now_s();
            total += k;
            if (t - start >= warmup) counted += k;
        }
        if (graph) CHECK(api.GraphLaunch(exec, s));
        else CHECK(api.LaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, s, params, NULL));
        CHECK(api.EventRecord(ev[launched % DEPTH], s));
        launched++;
    }
    CHECK(api.StreamSynchronize(s));
    double window = seconds - warmup;
    printf("{\"kernels\": %llu, \"counted\": %llu, \"window_s\": %.3f, \"kernels_per_s\": %.3f}\n",
           total, counted, window, counted / window);
    return 0;
}

/* The VMM pattern of NVIDIA's samples: create, map, and release the handle at once (the
 * mapping keeps the memory); repeat until the driver refuses. */
static int vmm(size_t block_mib) {
    size_t block = block_mib << 20;
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = 0;
    enum { MAX = 4096 };
    static CUdeviceptr va[MAX];
    size_t n = 0;
    CUresult last = CUDA_SUCCESS;
    while (n < MAX) {
        CUmemGenericAllocationHandle h;
        last = api.MemCreate(&h, block, &prop, 0);
        if (last != CUDA_SUCCESS) break;
        CHECK(api.MemAddressReserve(&va[n], block, 0, 0, 0));
        CHECK(api.MemMap(va[n], block, 0, h, 0));
        CHECK(api.MemRelease(h));
        n++;
    }
    size_t free_full = 0, total = 0;
    CHECK(api.MemGetInfo(&free_full, &total));
    for (size_t i = 0; i < n; i++) {
        CHECK(api.MemUnmap(va[i], block));
        CHECK(api.MemAddressFree(va[i], block));
    }
    size_t free_after = 0;
    CHECK(api.MemGetInfo(&free_after, &total));
    printf("{\"mapped\": %zu, \"last_error\": %d, \"mem_total\": %zu, \"mem_free_full\": %zu, "
           "\"mem_free_after\": %zu}\n", n * block, (int)last, total, free_full, free_after);
    return 0;
}

static int churn(long iterations, unsigned int seed) {
    enum { SLOTS = 32 };
    CUdeviceptr live[SLOTS] = {0};
    srand(seed);
    long ok = 0, oom = 0;
    /* Each iteration allocates once (freeing the slot's previous allocation first). */
    for (long i = 0; i < iterations; i++) {
        int k = rand() % SLOTS;
        if (live[k]) {
            CHECK(api.MemFree(live[k]));
            live[k] = 0;
        }
        size_t bytes = ((size_t)(rand() % 8) + 1) << 20;
        CUresult rc = api.MemAlloc(&live[k], bytes);
        if (rc == CUDA_SUCCESS) ok++;
        else if (rc == CUDA_ERROR_OUT_OF_MEMORY) { oom++; live[k] = 0; }
        else { fprintf(stderr, "cuMemAlloc: %d\n", rc); return 1; }
        if (i % 1024 == 0) {
            size_t fr, tot;
            CHECK(api.MemGetInfo(&fr, &tot));
            if (fr > tot) { fprintf(stderr, "free %zu > total %zu\n", fr, tot); return 1; }
        }
    }
    for (int k = 0; k < SLOTS; k++)
        if (live[k]) CHECK(api.MemFree(live[k]));
    printf("{\"allocs\": %ld, \"ooms\": %ld}\n", ok, oom);
    return 0;
}

static int hold(size_t mib, double seconds) {
    CUdeviceptr p;
    CHECK(api.MemAlloc(&p, mib << 20));
    printf("{\"holding\": %zu}\n", mib << 20);
    fflush(stdout);
    double start = now_s();
    while (now_s() - start < seconds) usleep(10000);
    CHECK(api.MemFree(p));
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: see the source\n"); return 2; }
    if (load_api()) return 1;
    CHECK(api.Init(0));
    CUdevice dev;
    CHECK(api.DeviceGet(&dev, 0));
    CUcontext ctx;
    CHECK(api.PrimaryCtxRetain(&ctx, dev));
    CHECK(api.CtxSetCurrent(ctx));
    if (!strcmp(argv[1], "vram") && argc == 3) return vram(strtoul(argv[2], NULL, 10));
    if (!strcmp(argv[1], "vmm") && argc == 3) return vmm(strtoul(argv[2], NULL, 10));
    if ((!strcmp(argv[1], "busy") || !strcmp(argv[1], "graph")) && argc == 6)
        return busy(argv[2], atof(argv[3]), atof(argv[4]), strtoull(argv[5], NULL, 10),
                    !strcmp(argv[1], "graph"));
    if (!strcmp(argv[1], "churn") && argc == 4) return churn(atol(argv[2]), atoi(argv[3]));
    if (!strcmp(argv[1], "hold") && argc == 4) return hold(strtoul(argv[2], NULL, 10), atof(argv[3]));
    fprintf(stderr, "bad arguments\n");
    return 2;
}

/*
 * tenant: a tenant written to break its vGPU, linked with -lcuda. Each mode is one attack; each
 * prints one JSON object with what it got.
 *
 * usage: tenant misuse ROUNDS         double frees, frees of unknown pointers, context teardown
 *                                     and resets, ROUNDS times; then holds 3 x 4 MiB, prints
 *                                     its result and waits to be killed
 *        tenant dlvsym BLOCK_MIB      allocates through driver functions found with dlvsym, and
 *                                     through a dlsym found with dlvsym, until refused
 *        tenant scribble FILE SECONDS overwrites every byte of FILE with garbage, again and
 *                                     again, for SECONDS
 *        tenant limits FILE           tries to change the limits page FILE: open it for writing,
 *                                     map it writable, write it
 */
#define _GNU_SOURCE
#include <cuda.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CHECK(call)                                                                      \
    do {                                                                                 \
        CUresult rc_ = (call);                                                           \
        if (rc_ != CUDA_SUCCESS) {                                                       \
            fprintf(stderr, "%s:%d: %s failed: %d\n", __FILE__, __LINE__, #call, (int)rc_); \
            return 1;                                                                    \
        }                                                                                \
    } while (0)

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int setup(CUcontext *ctx) {
    CHECK(cuInit(0));
    CUdevice dev;
    CHECK(cuDeviceGet(&dev, 0));
    CHECK(cuDevicePrimaryCtxRetain(ctx, dev));
    CHECK(cuCtxSetCurrent(*ctx));
    return 0;
}

static int misuse(long rounds) {
    CUcontext primary;
    if (setup(&primary)) return 1;
    const size_t MIB = 1 << 20;
    long refused = 0;
    for (long i = 0; i < rounds; i++) {
        CUdeviceptr p;
        CHECK(cuMemAlloc(&p, MIB));
        CHECK(cuMemFree(p));
        refused += cuMemFree(p) != CUDA_SUCCESS;                       /* double free */
        refused += cuMemFreeAsync(p, 0) != CUDA_SUCCESS;               /* and again, async */
        refused += cuMemFree((CUdeviceptr)0xdead00000000ull + i) != CUDA_SUCCESS; /* unknown */
        if (i % 100 == 0) {
            /* A context of its own, with memory in it, destroyed without freeing it. */
            CUcontext c;
            CHECK(cuCtxCreate(&c, 0, 0));
            CUdeviceptr q;
            CHECK(cuMemAlloc(&q, 2 * MIB));
            CHECK(cuCtxDestroy(c));
            refused += cuMemFree(q) != CUDA_SUCCESS;                   /* gone with it */
            CHECK(cuCtxSetCurrent(primary));
        }
        if (i % 1000 == 999) {
            /* The primary context reset with memory in it. */
            CUdeviceptr r;
            CHECK(cuMemAlloc(&r, 3 * MIB));
            CHECK(cuDevicePrimaryCtxReset(0));
            CHECK(cuDevicePrimaryCtxRetain(&primary, 0));
            CHECK(cuCtxSetCurrent(primary));
            refused += cuMemFree(r) != CUDA_SUCCESS;
        }
    }
    CUdeviceptr keep[3];
    for (int k = 0; k < 3; k++) CHECK(cuMemAlloc(&keep[k], 4 * MIB));
    printf("{\"rounds\": %ld, \"refused\": %ld, \"holding\": %zu}\n", rounds, refused, 12 * MIB);
    fflush(stdout);
    for (;;) pause();
}

typedef CUresult (*alloc_fn)(CUdeviceptr *, size_t);
typedef void *(*dlsym_fn)(void *, const char *);

static size_t allocate_until_refused(alloc_fn alloc, size_t block) {
    size_t total = 0;
    CUdeviceptr p;
    while (total < ((size_t)64 << 30) && alloc(&p, block) == CUDA_SUCCESS) total += block;
    return total;
}

static int through_dlvsym(size_t block_mib) {
    CUcontext ctx;
    if (setup(&ctx)) return 1;
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    if (!h) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 1; }
    /* The driver's own symbols carry no version, so most loaders find nothing here; where one
     * does, what it finds must be limited too. */
    alloc_fn versioned = (alloc_fn)dlvsym(h, "cuMemAlloc_v2", "GLIBC_2.2.5");
    /* The C library's dlsym, asked for by version: a way around an interposed dlsym. */
    dlsym_fn real_dlsym = (dlsym_fn)dlvsym(RTLD_DEFAULT, "dlsym", "GLIBC_2.34");
    if (!real_dlsym) real_dlsym = (dlsym_fn)dlvsym(RTLD_DEFAULT, "dlsym", "GLIBC_2.2.5");
    if (!real_dlsym) { fprintf(stderr, "dlvsym found no dlsym\n"); return 1; }
    alloc_fn via_dlsym = (alloc_fn)real_dlsym(h, "cuMemAlloc_v2");
    if (!via_dlsym) { fprintf(stderr, "no cuMemAlloc_v2 through dlsym\n"); return 1; }
    size_t block = block_mib << 20;
    size_t a = versioned ? allocate_until_refused(versioned, block) : 0;
    size_t b = allocate_until_refused(via_dlsym, block);
    printf("{\"via_dlvsym\": %zu, \"via_dlsym_from_dlvsym\": %zu}\n", a, b);
    return 0;
}

static int scribble(const char *path, double seconds) {
    int fd = open(path, O_WRONLY);
    if (fd < 0) { printf("{\"opened\": false, \"errno\": %d}\n", errno); return 0; }
    struct stat st;
    fstat(fd, &st);
    unsigned char *junk = malloc(st.st_size);
    uint64_t x = 0x9e3779b97f4a7c15ull;
    long passes = 0;
    double start = now_s();
    do {
        for (off_t i = 0; i < st.st_size; i++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            /* Every field gets garbage, extreme values among it. */
            junk[i] = (i / 8) % 3 == 0 ? 0xff : (unsigned char)x;
        }
        if (pwrite(fd, junk, st.st_size, 0) != st.st_size) break;
        passes++;
        usleep(2000);
    } while (now_s() - start < seconds);
    printf("{\"opened\": true, \"bytes\": %lld, \"passes\": %ld}\n", (long long)st.st_size, passes);
    return 0;
}

static int limits(const char *path) {
    int rw = open(path, O_RDWR);
    int rw_errno = rw < 0 ? errno : 0;
    int fd = rw >= 0 ? rw : open(path, O_RDONLY);
    void *m = MAP_FAILED;
    int map_errno = 0, write_errno = 0, mprotect_errno = 0;
    if (fd >= 0) {
        m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        map_errno = m == MAP_FAILED ? errno : 0;
        char b = 1;
        write_errno = write(fd, &b, 1) == 1 ? 0 : errno;
        void *ro = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
        if (ro != MAP_FAILED)
            mprotect_errno = mprotect(ro, 4096, PROT_READ | PROT_WRITE) == 0 ? 0 : errno;
    }
    printf("{\"open_rw_errno\": %d, \"mmap_write_errno\": %d, \"write_errno\": %d, "
           "\"mprotect_errno\": %d}\n", rw_errno, map_errno, write_errno, mprotect_errno);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "misuse")) return misuse(atol(argv[2]));
    if (argc == 3 && !strcmp(argv[1], "dlvsym")) return through_dlvsym(strtoul(argv[2], NULL, 10));
    if (argc == 4 && !strcmp(argv[1], "scribble")) return scribble(argv[2], atof(argv[3]));
    if (argc == 3 && !strcmp(argv[1], "limits")) return limits(argv[2]);
    fprintf(stderr, "usage: see the source\n");
    return 2;
}

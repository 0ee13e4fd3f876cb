/*
 * remote_nvml: an NVML client built against NVIDIA's nvml.h and linked with -lnvidia-ml (the
 * remote vGPU's client stub answers it). Prints each device's name and memory.
 */
#include <nvml.h>
#include <stdio.h>

int main(void) {
    nvmlReturn_t rc = nvmlInit_v2();
    if (rc != NVML_SUCCESS) {
        fprintf(stderr, "nvmlInit_v2: %s\n", nvmlErrorString(rc));
        return 1;
    }
    unsigned int n = 0;
    if ((rc = nvmlDeviceGetCount_v2(&n)) != NVML_SUCCESS) return 1;
    for (unsigned int i = 0; i < n; i++) {
        nvmlDevice_t d;
        char name[96], uuid[96];
        nvmlMemory_t m;
        if (nvmlDeviceGetHandleByIndex_v2(i, &d) != NVML_SUCCESS) return 1;
        if (nvmlDeviceGetName(d, name, sizeof name) != NVML_SUCCESS) return 1;
        if (nvmlDeviceGetUUID(d, uuid, sizeof uuid) != NVML_SUCCESS) return 1;
        if (nvmlDeviceGetMemoryInfo(d, &m) != NVML_SUCCESS) return 1;
        printf("device %u: %s %s total %llu MiB used %llu MiB\n", i, name, uuid,
               m.total >> 20, m.used >> 20);
    }
    nvmlShutdown();
    return 0;
}

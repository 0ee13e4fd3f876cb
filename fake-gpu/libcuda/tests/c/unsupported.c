/* Calls a function the simulated GPU does not implement: it must answer
 * CUDA_ERROR_NOT_SUPPORTED (twice, logging once) and the process must go on. */
#include <cuda.h>
#include <stdio.h>

int main(void) {
    if (cuInit(0) != CUDA_SUCCESS) return 1;
    for (int i = 0; i < 2; i++) {
        CUresult rc = cuGraphicsMapResources(0, NULL, NULL);
        if (rc != CUDA_ERROR_NOT_SUPPORTED) {
            fprintf(stderr, "expected CUDA_ERROR_NOT_SUPPORTED, got %d\n", rc);
            return 1;
        }
    }
    /* A bogus handle is an error, not a crash. */
    if (cuStreamSynchronize((CUstream)0xdeadbeef) != CUDA_ERROR_INVALID_HANDLE) return 1;
    if (cuMemFree(0x1234) != CUDA_ERROR_INVALID_VALUE) return 1;
    if (cuCtxSynchronize() != CUDA_ERROR_INVALID_CONTEXT) return 1;
    printf("ok\n");
    return 0;
}

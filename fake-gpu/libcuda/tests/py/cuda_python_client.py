"""NVIDIA's CUDA Python bindings (cuda-bindings, a client tensor-fusion did not write) on the
simulated GPU. The bindings dlopen libcuda.so.1 and fetch every entry point through
cuGetProcAddress_v2. Prints one JSON line; exits non-zero on any failure.

usage: python3 cuda_python_client.py PTX_FILE
"""
import ctypes
import json
import sys

from cuda.bindings import driver as cu


def check(res):
    err, *rest = res if isinstance(res, tuple) else (res,)
    if err != cu.CUresult.CUDA_SUCCESS:
        _, name = cu.cuGetErrorName(err)
        raise SystemExit(f"CUDA error {name.decode() if name else err}")
    return rest[0] if len(rest) == 1 else rest


ptx = open(sys.argv[1], "rb").read() + b"\0"
check(cu.cuInit(0))
count = check(cu.cuDeviceGetCount())
dev = check(cu.cuDeviceGet(0))
name = check(cu.cuDeviceGetName(256, dev)).split(b"\0")[0].decode()
total = check(cu.cuDeviceTotalMem(dev))
sms = check(cu.cuDeviceGetAttribute(cu.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev))
ctx = check(cu.cuDevicePrimaryCtxRetain(dev))
check(cu.cuCtxSetCurrent(ctx))
module = check(cu.cuModuleLoadData(ptx))
fill = check(cu.cuModuleGetFunction(module, b"tf_fill_u32"))

n = 50_000
dptr = check(cu.cuMemAlloc(n * 4))
stream = check(cu.cuStreamCreate(0))
value = ctypes.c_uint32(0xC0FFEE)
count_arg = ctypes.c_uint32(n)
ptr_arg = ctypes.c_uint64(int(dptr))
args = (ctypes.c_void_p * 3)(ctypes.addressof(ptr_arg), ctypes.addressof(value), ctypes.addressof(count_arg))
check(cu.cuLaunchKernel(fill, (n + 255) // 256, 1, 1, 256, 1, 1, 0, stream, ctypes.addressof(args), 0))
check(cu.cuStreamSynchronize(stream))
host = (ctypes.c_uint32 * n)()
check(cu.cuMemcpyDtoH(ctypes.addressof(host), dptr, n * 4))
bad = sum(1 for v in host if v != 0xC0FFEE)
free_b, total_b = check(cu.cuMemGetInfo())
check(cu.cuMemFree(dptr))
check(cu.cuStreamDestroy(stream))
check(cu.cuModuleUnload(module))
check(cu.cuDevicePrimaryCtxRelease(dev))
print(json.dumps({"devices": count, "name": name, "total": total, "sms": sms,
                  "elements": n, "bad": bad, "mem_total": total_b}))
sys.exit(1 if bad else 0)

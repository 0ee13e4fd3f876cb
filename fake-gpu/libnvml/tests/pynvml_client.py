"""An nvidia-smi-like report through NVIDIA's own Python bindings (nvidia-ml-py, `import pynvml`).

Unmodified third-party client: it loads libnvidia-ml.so.1 from LD_LIBRARY_PATH, exactly as on a
machine with NVIDIA's driver. Prints one line per device and process, then `JSON <object>` with
what it saw, for the Rust test to check.
"""

import json
import os

import pynvml


def text(v):
    return v.decode() if isinstance(v, bytes) else v


def main():
    pynvml.nvmlInit()
    report = {
        "driver": text(pynvml.nvmlSystemGetDriverVersion()),
        "nvml": text(pynvml.nvmlSystemGetNVMLVersion()),
        "cuda": pynvml.nvmlSystemGetCudaDriverVersion_v2(),
        "devices": [],
    }
    print(f"driver {report['driver']}  NVML {report['nvml']}  CUDA {report['cuda']}")
    for i in range(pynvml.nvmlDeviceGetCount()):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        mem = pynvml.nvmlDeviceGetMemoryInfo(h)
        mem2 = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
        util = pynvml.nvmlDeviceGetUtilizationRates(h)
        pci = pynvml.nvmlDeviceGetPciInfo(h)
        procs = []
        for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h):
            procs.append({
                "pid": p.pid,
                "used": p.usedGpuMemory,
                "name": text(pynvml.nvmlSystemGetProcessName(p.pid)),
            })
        try:
            samples = [
                {"pid": s.pid, "sm": s.smUtil, "mem": s.memUtil}
                for s in pynvml.nvmlDeviceGetProcessUtilization(h, 0)
            ]
        except pynvml.NVMLError_NotFound:
            samples = []
        try:
            fan = pynvml.nvmlDeviceGetFanSpeed(h)
        except pynvml.NVMLError_NotSupported:
            fan = None
        current_mig, pending_mig = pynvml.nvmlDeviceGetMigMode(h)
        d = {
            "index": i,
            "name": text(pynvml.nvmlDeviceGetName(h)),
            "uuid": text(pynvml.nvmlDeviceGetUUID(h)),
            "serial": text(pynvml.nvmlDeviceGetSerial(h)),
            "bus_id": text(pci.busId),
            "pci_device_id": pci.pciDeviceId,
            "total": mem.total,
            "used": mem.used,
            "free": mem.free,
            "total_v2": mem2.total,
            "gpu_util": util.gpu,
            "mem_util": util.memory,
            "temperature": pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU),
            "power_mw": pynvml.nvmlDeviceGetPowerUsage(h),
            "power_limit_mw": pynvml.nvmlDeviceGetEnforcedPowerLimit(h),
            "sm_clock": pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
            "max_sm_clock": pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM),
            "pstate": pynvml.nvmlDeviceGetPerformanceState(h),
            "fan": fan,
            "mig": [current_mig, pending_mig],
            "cc": list(pynvml.nvmlDeviceGetCudaComputeCapability(h)),
            "processes": procs,
            "samples": samples,
        }
        report["devices"].append(d)
        print(
            f"GPU {i}: {d['name']} {d['uuid']} bus {d['bus_id']} | "
            f"{d['used'] >> 20}MiB / {d['total'] >> 20}MiB | util {d['gpu_util']}% mem {d['mem_util']}% | "
            f"{d['temperature']}C {d['power_mw'] / 1000:.0f}W / {d['power_limit_mw'] / 1000:.0f}W | "
            f"SM {d['sm_clock']}/{d['max_sm_clock']}MHz P{d['pstate']} MIG {current_mig}"
        )
        for p in procs:
            sm = next((s["sm"] for s in samples if s["pid"] == p["pid"]), None)
            print(f"  pid {p['pid']} {os.path.basename(p['name'])} {p['used'] >> 20}MiB sm {sm}%")
    pynvml.nvmlShutdown()
    print("JSON " + json.dumps(report))


if __name__ == "__main__":
    main()

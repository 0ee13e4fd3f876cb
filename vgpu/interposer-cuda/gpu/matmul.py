# A matmul loop that keeps the GPU fed (synchronizes every 16 matmuls, like a training loop),
# reporting matmuls per second over [warmup, seconds].
import json, sys, time, torch
seconds, warmup = float(sys.argv[1]), float(sys.argv[2])
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
torch.cuda.synchronize()
start = time.monotonic(); n = 0; counted = 0
while time.monotonic() - start < seconds:
    for _ in range(16):
        c = a @ b
    torch.cuda.synchronize()
    n += 16
    if time.monotonic() - start >= warmup:
        counted += 16
print(json.dumps({"matmuls": n, "per_s": counted / (seconds - warmup)}))

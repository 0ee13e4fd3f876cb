import json, torch
free, total = torch.cuda.mem_get_info()
held, err = [], None
try:
    while True:
        held.append(torch.empty(256 << 20, dtype=torch.uint8, device="cuda"))
except torch.OutOfMemoryError as e:
    err = type(e).__name__
got = len(held) * (256 << 20)
del held
torch.cuda.empty_cache()
print(json.dumps({"mem_get_info_total": total, "mem_get_info_free": free, "allocated_before_oom": got, "error": err}))

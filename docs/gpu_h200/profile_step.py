"""Where the GPU's time goes in one eager training step of IRRA's model (batch 128, bf16
autocast, fused AdamW): three steps under torch.profiler after three warm-up steps, the
operators by device time and by CPU time. `python docs/gpu_h200/profile_step.py` on a
machine with a GPU (docs/gpu_h200/profile.txt: what it printed on one NVIDIA H200)."""

import torch
from torch.profiler import ProfilerActivity, profile

from tbps.bench.train_step import IRRA_GPU, IRRA_HEADS, build_module, synthetic_batch
from tbps.model.module import NEW_MODULES
from tbps.model.optim import param_groups

dev = torch.device("cuda")
m = build_module(IRRA_GPU + IRRA_HEADS + ["compile=false"], 11003, dev)
opt = torch.optim.AdamW(param_groups(m, 1e-5, 4e-5, NEW_MODULES, 5.0, 2.0), fused=True)
batch = synthetic_batch(128, (384, 128), m.tokenizer, 11003, dev, torch.Generator().manual_seed(0),
                        m.caption_annotations)


def step() -> None:
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = m.compute_losses(dict(batch), progress=1.0)[0]
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


for _ in range(3):
    step()
torch.cuda.synchronize()
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
    for _ in range(3):
        step()
    torch.cuda.synchronize()
print(p.key_averages().table(sort_by="cuda_time_total", row_limit=35, max_name_column_width=60))
print(p.key_averages().table(sort_by="cpu_time_total", row_limit=12, max_name_column_width=60))

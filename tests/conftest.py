"""Suite-wide settings: one intra-op thread. The suite's tensors are small; on a 2-core machine
torch's thread pool costs more than it saves (measured: traces 2-4x slower with 2 threads when
the cores are shared)."""
import torch

torch.set_num_threads(1)

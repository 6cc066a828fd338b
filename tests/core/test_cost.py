import torch
from torch import nn

from cnn_redundancy.core.cost import count_macs_params, cpu_latency, model_cost


def test_known_macs_and_params_and_mode_restored():
    m = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=False)).train()
    macs, params = count_macs_params(m, torch.zeros(1, 1, 4, 4))
    assert params == 18 and macs == 2 * 9 * 16  # 2 kernels of 3x3 at 16 output positions
    cost = model_cost(m, torch.zeros(1, 1, 4, 4), repeats=2, batch=3)
    assert cost["params"] == 18 and cost["latency_ms"] > 0 and m.training
    assert cpu_latency(m, torch.zeros(2, 1, 4, 4), runs=2, warmup=0) > 0 and m.training

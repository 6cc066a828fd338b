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


def test_macs_are_torch_flop_counters_halved_transposed_and_grouped_convs_included():
    from torch.utils.flop_counter import FlopCounterMode

    from cnn_redundancy.core.cost import count_macs

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, stride=2, groups=4), nn.ReLU(),
                      nn.ConvTranspose2d(8, 6, 2, stride=2), nn.ConvTranspose2d(6, 4, 3, stride=1, padding=1, groups=2),
                      nn.Flatten(), nn.LazyLinear(5))  # fmt: skip
    x = torch.zeros(1, 3, 9, 9)
    m(x)
    with FlopCounterMode(display=False) as counter:
        m(x)
    flops = counter.get_flop_counts()
    macs = count_macs(m, x)
    assert set(macs) == {"0", "1", "3", "4", "6"}  # the transposed convs too
    for name, n in macs.items():
        assert 2 * n == sum(flops[f"Sequential.{name}"].values()), name

"""llm.c's parameter and FLOP counts by hand arithmetic, and the GPU peak table."""

import pytest

from llmpy.config import ModelConfig
from llmpy.errors import LlmpyError
from llmpy.metrics.mfu import mfu, parameter_count, peak_flops, training_flops_per_token
from llmpy.model import GPT


def test_d12_parameter_count_and_flops_by_hand():
    cfg = ModelConfig(n_layer=12, n_head=12, n_embd=768)
    # wte 50304*768 = 38,633,472; wpe 1024*768 = 786,432; per block 12*768^2 + 13*768 = 7,077,888 + 9,984 = 7,087,872,
    # x12 = 85,054,464; final LayerNorm 2*768 = 1,536; total 124,475,904
    assert parameter_count(cfg) == 124_475_904
    # 6N = 746,855,424; 6*L*C*T = 6*12*768*1024 = 56,623,104
    assert training_flops_per_token(cfg, 1024) == 803_478_528
    assert training_flops_per_token(cfg, 1024, num_params=1_000) == 6_000 + 56_623_104


def test_tiny_config_count_by_hand_matches_the_model():
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=64, block_size=64)
    # 50304*64 = 3,219,456; 64*64 = 4,096; 2*(12*4096 + 13*64) = 2*49,984 = 99,968; 2*64 = 128
    assert parameter_count(cfg) == 3_323_648
    assert sum(p.numel() for p in GPT(cfg).parameters()) == 3_323_648
    # 6*3,323,648 = 19,941,888; 6*2*64*64 = 49,152
    assert training_flops_per_token(cfg, 64) == 19_991_040


def test_mfu():
    # 444,000 tok/s * 803,478,528 FLOP/tok = 356.744466432e12 FLOP/s; / 989e12 = 0.3607123
    assert mfu(444_000, 803_478_528, 989e12) == pytest.approx(0.3607123, rel=1e-6)
    assert mfu(444_000, 803_478_528, None) is None


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H100 NVL", 835e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA GH200 480GB", 989e12),
        ("NVIDIA B200", 2250e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA A100-SXM4-40GB", 312e12),
        ("NVIDIA A100 80GB PCIe", 312e12),
        ("NVIDIA A10", 125e12),
        ("NVIDIA A10G", 70e12),
        ("NVIDIA L4", 121e12),
        ("NVIDIA L40S", 362e12),
        ("NVIDIA GeForce RTX 4090", 165e12),
        ("NVIDIA GeForce RTX 3090", 71e12),
    ],
)
def test_bf16_peaks_by_device_name(name, peak):
    assert peak_flops(name) == peak
    assert peak_flops(name, "bf16") == peak


@pytest.mark.parametrize("name, peak", [("NVIDIA A100-SXM4-80GB", 156e12), ("NVIDIA H100 80GB HBM3", 494.5e12)])
def test_fp32_means_tf32_at_half_rate(name, peak):
    assert peak_flops(name, "fp32") == peak


@pytest.mark.parametrize("name", ["cpu", "", "Some Future GPU", "NVIDIA H20", "NVIDIA RTX A4000", "Tesla T4"])
def test_unknown_devices_have_no_peak(name):
    assert peak_flops(name) is None


def test_unknown_precision_is_an_error():
    with pytest.raises(LlmpyError, match="bf16"):
        peak_flops("NVIDIA H100 80GB HBM3", "int8")

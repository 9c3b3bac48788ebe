import numpy as np
import pytest
import torch

from napari_unet.core.model import (
    UNet,
    UNetConfig,
    count_parameters,
    flops_per_pixel,
    fuse_batchnorm,
    fused_cpu_net,
    widen,
)


@pytest.mark.parametrize("size", [(64, 64), (48, 80), (16, 32)])
def test_same_mode_keeps_shape(size):
    m = UNet(UNetConfig(base=4, depth=3)).eval()
    out = m(torch.zeros(2, 1, *size))
    assert out.shape == (2, 3, *size)


def test_same_mode_rejects_odd_sizes_loudly():
    m = UNet(UNetConfig(base=4, depth=3))
    with pytest.raises(ValueError, match="divisible by 8.*nearest allowed is 72"):
        m(torch.zeros(1, 1, 65, 64))


def test_valid_mode_shapes_match_the_paper():
    # The paper's network (depth 4): 572 -> 388.
    m = UNet(UNetConfig(base=2, depth=4, mode="valid", norm="none"))
    assert m.output_size(572) == 388
    assert m.shrink == 92
    out = m.eval()(torch.zeros(1, 1, 572, 572))
    assert out.shape == (1, 3, 388, 388)


@pytest.mark.parametrize("size", [100, 101, 187])
def test_valid_mode_odd_sizes(size):
    m = UNet(UNetConfig(base=2, depth=3, mode="valid"))
    fit = m.fit_input_size(size)
    assert fit >= size
    out = m.eval()(torch.zeros(1, 1, fit, fit + 2 * 8))  # +16 keeps it valid at depth 3 (2**3 * 2)
    assert out.shape[-2] == m.output_size(fit)
    if fit != size:
        with pytest.raises(ValueError, match="nearest allowed"):
            m(torch.zeros(1, 1, size, size))


def test_channels_and_classes_configurable():
    m = UNet(UNetConfig(in_channels=2, classes=5, base=4, depth=2)).eval()
    assert m(torch.zeros(1, 2, 32, 32)).shape == (1, 5, 32, 32)
    with pytest.raises(ValueError, match=r"expected input \(N, 2, H, W\)"):
        m(torch.zeros(1, 1, 32, 32))


def test_skip_connections_and_dropout_exist():
    m = UNet(UNetConfig(base=4, depth=3, dropout=0.5))
    assert isinstance(m.dropout, torch.nn.Dropout2d)
    # Up blocks see concatenated encoder + decoder features (2x channels in).
    assert [blk[0].in_channels for blk in m.up] == [32, 16, 8]


def test_fused_batchnorm_gives_same_output():
    m = UNet(UNetConfig(base=4, depth=2))
    m.train()
    m(torch.randn(4, 1, 32, 32))  # move BN running stats off their defaults
    m.eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        ref = m(x)
        fused = fuse_batchnorm(m)(x)
    assert torch.allclose(ref, fused, atol=1e-5)


@pytest.mark.parametrize("cfg", [UNetConfig(base=4, depth=3), UNetConfig(base=4, depth=2, mode="valid", norm="none")])
def test_widen_keeps_the_function_and_the_new_channels_learn(cfg):
    torch.manual_seed(0)
    m = UNet(cfg)
    m.train()
    m(torch.randn(4, 1, 64, 64))  # running statistics off their defaults
    for p in m.parameters():  # and no weight at its default either
        p.data.add_(0.1 * torch.randn_like(p))
    wide = widen(m.eval(), 6)
    assert wide.config.base == 6 and count_parameters(wide) > count_parameters(m)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(wide(x), m(x), atol=1e-5)
    wide.train()
    wide.dropout = torch.nn.Identity()
    wide(x).square().mean().backward()
    assert wide.head.weight.grad[:, 4:].abs().sum() > 0  # the new channels are read from the first step on
    with pytest.raises(ValueError, match="base above"):
        widen(m, 4)


@pytest.mark.parametrize("cfg", [UNetConfig(base=4, depth=2), UNetConfig(base=4, depth=2, mode="valid", norm="none")])
def test_fused_cpu_net_gives_the_plain_bf16_logits(cfg):
    m = UNet(cfg)
    m.train()
    m(torch.randn(4, 1, 60, 60) if cfg.mode == "valid" else torch.randn(4, 1, 32, 32))
    net = fuse_batchnorm(m).to(memory_format=torch.channels_last)
    fused = fused_cpu_net(net)
    if fused is None:
        pytest.skip("this torch has no oneDNN fused convolution")
    size = net.fit_input_size(48)
    x = torch.randn(2, 1, size, size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref, out = net(x), fused(x)
    assert out.shape == ref.shape
    assert torch.equal(out.float(), ref.float())


def test_fused_cpu_net_is_none_without_onednn(monkeypatch):
    net = fuse_batchnorm(UNet(UNetConfig(base=4, depth=2)))
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert fused_cpu_net(net) is None
    monkeypatch.undo()

    def missing(*args):
        raise RuntimeError("this build has no such kernel")

    monkeypatch.setattr(torch.ops.mkldnn, "_convolution_pointwise", missing, raising=False)
    assert fused_cpu_net(net) is None


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="mode must be"):
        UNetConfig(mode="full")
    with pytest.raises(ValueError, match="unknown U-Net config keys"):
        UNetConfig.from_dict({"base": 4, "widht": 3})


def test_flops_counted():
    m = UNet(UNetConfig(base=16, depth=4))
    assert 5e4 < flops_per_pixel(m) < 2e5
    assert count_parameters(m) > 1e6


def test_test_time_augmentation_is_flip_equivariant():
    import torch

    from napari_unet.core.predict import InferenceModel

    torch.manual_seed(0)
    m = UNet(UNetConfig(base=4, depth=2)).eval()
    infer = InferenceModel.prepare(m, torch.device("cpu"), precision="fp32", tta=True)
    plain = InferenceModel.prepare(m, torch.device("cpu"), precision="fp32")
    x = np.random.default_rng(0).random((1, 1, 64, 64), dtype=np.float32)
    p, q = infer(x), infer(x[..., ::-1].copy())
    np.testing.assert_allclose(q[..., ::-1], p, atol=1e-5)  # flipping the input flips the output
    assert not np.allclose(plain(x[..., ::-1].copy())[..., ::-1], plain(x), atol=1e-5)  # the plain net is not
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)

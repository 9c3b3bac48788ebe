"""The U-Net of Ronneberger et al. (2015), in the paper's `valid` form and a practical `same` form.

Both share one block structure: pairs of 3x3 conv + (norm) + ReLU, 2x2 max-pooling that doubles the
channels, a bridge with dropout, 2x2 up-convolutions that halve the channels, concatenation of the
encoder features and a 1x1 output convolution. `valid` uses unpadded convolutions, so the output is
smaller than the input and the skip features are centre-cropped (the paper's overlap-tile design);
`same` pads every convolution and keeps the output the size of the input.

The shape contract is explicit and fails loudly: `UNet.check_input` says which sizes are allowed and
why, instead of letting a skip concatenation fail deep inside `forward`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

MODES = ("same", "valid")
NORMS = ("batch", "none")


#: Sane bounds of the architecture (a file claiming more is damaged or hostile: base 512 at depth 4
#: would take gigabytes before its weights could be checked).
LIMITS = {"in_channels": (1, 16), "classes": (1, 16), "base": (1, 256), "depth": (1, 8)}


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a U-Net; stored verbatim in every model file.

    Attributes:
        in_channels: Input channels (1 for a single fluorescence channel).
        classes: Output classes (background, object interior, object boundary).
        base: Channels of the first stage; each pooling doubles them.
        depth: Number of 2x2 poolings (the paper uses 4).
        mode: ``"same"`` (padded convolutions) or ``"valid"`` (the paper's unpadded ones).
        norm: ``"batch"`` or ``"none"`` (the paper has none).
        dropout: Dropout probability at the bridge (end of the contracting path).
    """

    in_channels: int = 1
    classes: int = 3
    base: int = 16
    depth: int = 4
    mode: str = "same"
    norm: str = "batch"
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        for name, (lo, hi) in LIMITS.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ValueError(f"{name} must be a whole number from {lo} to {hi}, got {v!r}")
        if (
            isinstance(self.dropout, bool)
            or not isinstance(self.dropout, (int, float))
            or not 0.0 <= self.dropout < 1.0
        ):
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown U-Net config keys: {sorted(unknown)}")
        return cls(**d)


def _conv_pair(cin: int, cout: int, pad: int, norm: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c_in in (cin, cout):
        layers.append(nn.Conv2d(c_in, cout, 3, padding=pad, bias=norm == "none"))
        if norm == "batch":
            layers.append(nn.BatchNorm2d(cout))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _center_crop(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    dy, dx = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    return x[..., dy : dy + h, dx : dx + w]


class UNet(nn.Module):
    """U-Net with a configurable depth, width and padding mode; see `UNetConfig`."""

    def __init__(self, config: UNetConfig | None = None, **kwargs) -> None:
        super().__init__()
        self.config = config or UNetConfig(**kwargs)
        c = self.config
        pad = 1 if c.mode == "same" else 0
        widths = [c.base * 2**i for i in range(c.depth + 1)]
        self.down = nn.ModuleList()
        cin = c.in_channels
        for w in widths[:-1]:
            self.down.append(_conv_pair(cin, w, pad, c.norm))
            cin = w
        self.pool = nn.MaxPool2d(2)
        self.bridge = _conv_pair(widths[-2], widths[-1], pad, c.norm)
        self.dropout = nn.Dropout2d(c.dropout) if c.dropout > 0 else nn.Identity()
        self.upconv = nn.ModuleList()
        self.up = nn.ModuleList()
        for w_hi, w_lo in zip(widths[:0:-1], widths[-2::-1]):
            self.upconv.append(nn.ConvTranspose2d(w_hi, w_lo, 2, stride=2))
            self.up.append(_conv_pair(2 * w_lo, w_lo, pad, c.norm))
        self.head = nn.Conv2d(widths[0], c.classes, 1)

    # -- shape contract -------------------------------------------------------------------
    def _output_or_reason(self, size: int) -> tuple[int, str]:
        """(output length, "") for an allowed input length, else (0, why not)."""
        d = self.config.depth
        if self.config.mode == "same":
            if size < 2**d or size % 2**d:
                return 0, f"same-mode U-Net of depth {d} needs sizes divisible by {2**d}"
            return size, ""
        s = size
        for level in range(d):
            s -= 4
            if s <= 0 or s % 2:
                return 0, f"valid-mode U-Net: size before pooling {level + 1} is odd or empty"
            s //= 2
        s -= 4
        for _ in range(d):
            s = 2 * s - 4
        return (s, "") if s > 0 else (0, "valid-mode U-Net: input too small")

    def fit_input_size(self, size: int) -> int:
        """The smallest allowed input length >= `size`."""
        s = max(int(size), 1)
        while not self._output_or_reason(s)[0]:
            s += 1
        return s

    def output_size(self, size: int) -> int:
        """Output length along one axis for an input of length `size`; ValueError if not allowed."""
        out, why = self._output_or_reason(int(size))
        if not out:
            raise ValueError(f"{why}: got {size}, nearest allowed is {self.fit_input_size(size)}")
        return out

    @property
    def shrink(self) -> int:
        """Pixels lost on each side of the input (0 in `same` mode)."""
        s = self.fit_input_size(256)
        return (s - self.output_size(s)) // 2

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"expected input (N, {self.config.in_channels}, H, W), got {tuple(x.shape)}")
        self.output_size(x.shape[-2])
        self.output_size(x.shape[-1])

    # -- forward ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.dropout(self.bridge(x))
        for upconv, block, skip in zip(self.upconv, self.up, reversed(skips)):
            x = upconv(x)
            if skip.shape[-2:] != x.shape[-2:]:
                skip = _center_crop(skip, x.shape[-2], x.shape[-1])
            x = block(torch.cat([skip, x], dim=1))
        return self.head(x)


def widen(model: UNet, base: int) -> UNet:
    """A copy of `model` with `base` channels in its first stage (more than its own), computing the same function.

    Every layer keeps its trained weights; the channels it gains start with PyTorch's default initialisation
    (BatchNorm: identity) and the layers after them read them with zero weights, so the wider network's
    output is the narrower one's (up to float rounding) until training moves those weights. Zero-read new
    channels rather than copies of old ones (Net2WiderNet): with Adam a copy gets the same update as its
    original and the two stay one channel, so that needs noise, which changes the function.
    """
    old = model.config
    if base <= old.base:
        raise ValueError(f"widen needs a base above the model's own ({old.base}), got {base}")
    wide = UNet(replace(old, base=base))
    # The first convolution of each decoder stage reads [skip, up-convolution]: two runs of old channels.
    split = {f"up.{k}.0.weight": old.base * 2 ** (old.depth - 1 - k) for k in range(old.depth)}
    state = wide.state_dict()
    with torch.no_grad():
        for key, w_old in model.state_dict().items():
            w_new = state[key]
            if w_old.shape == w_new.shape:
                w_new.copy_(w_old)
                continue
            index = [torch.arange(n) for n in w_old.shape]
            fresh = [torch.ones(n, dtype=torch.bool) for n in w_new.shape]
            for dim in range(w_old.ndim):
                if dim == 1 and key in split:  # the second run starts where the wide skip ends
                    half = split[key]
                    index[1] = torch.cat([torch.arange(half), half * base // old.base + torch.arange(half)])
                fresh[dim][index[dim]] = False
            w_new[torch.meshgrid(*index, indexing="ij")] = w_old
            if w_new.ndim == 4:  # silence the new input channels of the old output channels
                out_dim, in_dim = (1, 0) if key.startswith("upconv") else (0, 1)
                old_out = ~fresh[out_dim].view([-1 if d == out_dim else 1 for d in range(4)])
                new_in = fresh[in_dim].view([-1 if d == in_dim else 1 for d in range(4)])
                w_new.masked_fill_(old_out & new_in, 0.0)
    wide.load_state_dict(state)
    return wide.train(model.training)


def fuse_batchnorm(model: UNet) -> UNet:
    """Fold every BatchNorm into the preceding convolution (eval-mode inference only).

    Returns the same model, modified in place, with outputs identical up to float rounding. Measured
    gain on CPU is small (1 % at 512 px tiles, benchmarks/precision.py); it saves the BN passes and
    their memory traffic. Training a fused model is not supported (its config still says ``batch``).
    """
    model.eval()
    for seq in [*model.down, model.bridge, *model.up]:
        for i in range(len(seq) - 1):
            if isinstance(seq[i], nn.Conv2d) and isinstance(seq[i + 1], nn.BatchNorm2d):
                seq[i] = fuse_conv_bn_eval(seq[i], seq[i + 1])
                seq[i + 1] = nn.Identity()
    return model


class FusedCpuUNet(nn.Module):
    """Inference-only form of a BatchNorm-folded `UNet` for CPUs with native bf16: every 3x3 convolution runs
    with its ReLU as one oneDNN kernel (`torch.ops.mkldnn._convolution_pointwise`, the fused op that
    torch.compile's CPU backend emits), so the activations are not read and written a second time.

    The plain bf16 network spends a third of its time in those separate ReLU passes. Measured on an AMX Xeon
    (benchmarks/RESULTS.md, "Convolution and ReLU as one kernel"): 1.6x the forward throughput on 4 x 512^2
    tiles, with logits identical to the plain network's under bf16 autocast. Not used for fp32, where the
    convolutions dominate and fusing gained nothing. Also measured and not kept: replacing the decoder's
    concatenation by two convolutions summed in the fused kernel (1.75x, but the extra bf16 rounding changes
    the probabilities by up to 0.006 for 0.5 % of end-to-end time). Call it under the caller's bf16 autocast:
    pooling, up-convolutions, concatenation and the 1x1 head stay the network's own modules.
    """

    def __init__(self, net: UNet):
        super().__init__()

        def pair(seq: nn.Sequential) -> list[tuple]:
            convs = [m for m in seq if isinstance(m, nn.Conv2d)]
            if len(convs) != 2 or any(isinstance(m, nn.BatchNorm2d) for m in seq):
                raise ValueError("expected two convolutions with their BatchNorm folded")
            return [
                (
                    c.weight.detach().to(torch.bfloat16).contiguous(memory_format=torch.channels_last),
                    None if c.bias is None else c.bias.detach().to(torch.bfloat16),
                    list(c.padding),
                )
                for c in convs
            ]

        self.down = [pair(seq) for seq in net.down]
        self.bridge = pair(net.bridge)
        self.up = [pair(seq) for seq in net.up]
        self.pool, self.upconv, self.head = net.pool, net.upconv, net.head

    @staticmethod
    def _pair(x: torch.Tensor, convs: list[tuple]) -> torch.Tensor:
        for w, b, pad in convs:
            x = torch.ops.mkldnn._convolution_pointwise(x, w, b, pad, [1, 1], [1, 1], 1, "relu", [], "")
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.bfloat16)
        skips = []
        for convs in self.down:
            x = self._pair(x, convs)
            skips.append(x)
            x = self.pool(x)
        x = self._pair(x, self.bridge)
        for upconv, convs, skip in zip(self.upconv, self.up, reversed(skips)):
            x = upconv(x).to(torch.bfloat16)
            if skip.shape[-2:] != x.shape[-2:]:
                skip = _center_crop(skip, x.shape[-2], x.shape[-1])
            x = self._pair(torch.cat([skip, x], dim=1), convs)
        return self.head(x)


#: `fused_cpu_net` keeps the fused network only where its probabilities agree with the plain one's to this
#: (both bf16; they are identical with the torch pinned in CI).
FUSED_TOLERANCE = 1e-3


def fused_cpu_net(net: UNet) -> FusedCpuUNet | None:
    """`FusedCpuUNet` of a BatchNorm-folded eval-mode `net`, checked against it on a small input under bf16
    autocast; None where this torch has no oneDNN fused convolution or the two disagree."""
    try:
        if not torch.backends.mkldnn.is_available():
            return None
        fused = FusedCpuUNet(net)
        size = net.fit_input_size(64)
        x = torch.rand(2, net.config.in_channels, size, size, generator=torch.Generator().manual_seed(0))
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            a = torch.softmax(net(x).float(), 1)
            b = torch.softmax(fused(x).float(), 1)
    except (AttributeError, RuntimeError, ValueError, NotImplementedError):
        return None
    return fused if a.shape == b.shape and float((a - b).abs().max()) <= FUSED_TOLERANCE else None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_pixel(model: UNet, size: int = 256) -> float:
    """Multiply-adds x 2 per output pixel, counted from the layer shapes at input `size`."""
    total = 0.0
    hooks = []

    def hook(mod, inp, out):
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
            total += 2.0 * k * out.numel()
        elif isinstance(mod, nn.ConvTranspose2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * mod.out_channels
            total += 2.0 * k * inp[0].numel()

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            hooks.append(m.register_forward_hook(hook))
    size = model.fit_input_size(size)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(1, model.config.in_channels, size, size))
    model.train(was_training)
    for h in hooks:
        h.remove()
    return total / (out.shape[-1] * out.shape[-2])

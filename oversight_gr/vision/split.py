"""The MNIST split autoencoder with certificate decoders (paper §4.1, Table 2).

An encoder maps a ``[-1, 1]`` image ``[B, 784]`` to a latent ``[B, 32]``. Gradient routing
(:class:`oversight_gr.routing.RouteTable` + :func:`oversight_gr.routing.scale_gradient` on the
latent) lets the reconstruction gradient of digits 0-4 reach only the first 16 latent dims and
that of digits 5-9 only the last 16; the decoder reads all 32 dims in the forward pass. Two
"certificate" decoders, each reading one half of the latent through ``detach()``, are trained
alongside on all digits: they measure what a half encodes without shaping it. A good split
means the certificate on the half routed for 5-9 reconstructs 5-9 well and 0-4 badly.

Groups: digit ``d`` is in group ``0`` if ``d < 5`` else group ``1``; half ``h`` is latent dims
``16 h .. 16 h + 15``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from oversight_gr.config import SEED_LIMIT, option, validate
from oversight_gr.routing import RouteTable, scale_gradient

__all__ = [
    "IMAGE_DIM",
    "LATENT_DIM",
    "HALF",
    "SplitSetting",
    "TrainConfig",
    "SplitAutoencoder",
    "mlp",
    "digit_group",
    "route_table_for",
    "to_pixels",
    "pearson_cross_abs",
    "split_losses",
    "train_split",
    "evaluate_split",
    "latent_diagnostics",
]

log = logging.getLogger(__name__)

IMAGE_DIM = 784
LATENT_DIM = 32
HALF = LATENT_DIM // 2
ROUTINGS = ("split", "overlap", "none")
PRECISIONS = ("fp32", "bf16")


@dataclasses.dataclass(frozen=True)
class SplitSetting:
    """What is trained: the routing, the decoders, the regularizers and the training digits."""

    routing: str = option(
        "split",
        "split: digits 0-4 route reconstruction gradient to latent dims 0-15 and 5-9 to dims "
        "16-31; overlap: 0-4 reach all 32 dims and 5-9 only dims 16-31 (the 5-9 half is also "
        "trained on 0-9); none: no routing",
        choices=ROUTINGS,
    )
    separate_decoders: bool = option(
        False,
        "one decoder per half instead of the shared decoder: a digit of group g is "
        "reconstructed by decoder g reading only half g",
    )
    l1: float = option(3e-3, "weight of the L1 penalty on the latent (per-image L1 norm)", low=0.0)
    corr: float = option(
        0.1, "weight of the mean |Pearson correlation| between the two halves' dims", low=0.0
    )
    train_digits: tuple[int, ...] = option(
        (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
        "digits the autoencoder is trained on (others are filtered out of its losses; the "
        "certificates always train on all digits)",
        choices=tuple(range(10)),
    )

    def __post_init__(self) -> None:
        validate(self)
        if not self.train_digits:
            raise ValueError("SplitSetting.train_digits must name at least one digit, got ()")
        if self.separate_decoders and self.routing == "none":
            raise ValueError(
                "SplitSetting.separate_decoders=True needs routing 'split' or 'overlap' (a digit "
                "group must own a half), got routing='none'"
            )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How long and on what it is trained (the paper: 200 epochs, batch 2048, Adam 1e-3)."""

    epochs: int = option(200, "passes over the training images", low=1)
    batch_size: int = option(2048, "images per optimizer step", low=1)
    lr: float = option(1e-3, "Adam learning rate", low=0.0)
    weight_decay: float = option(5e-5, "Adam weight decay (L2 added to the gradient)", low=0.0)
    train_subset: int | None = option(
        None, "train on the first N training images only (None: all 60k)", low=1
    )
    seed: int = option(0, "seed of the initialization and the batch order", low=0,
                       high=SEED_LIMIT)
    device: str = option("cpu", "torch device, e.g. cpu, cuda, cuda:1")
    hidden: tuple[int, ...] = option(
        (2048, 512), "encoder hidden widths, mirrored by the decoders (the paper: 2048 512)",
        low=1, flag=False,
    )
    precision: str = option(
        "fp32",
        "fp32: full float32 (the paper); bf16: bfloat16 autocast of the training forward pass "
        "(weights, optimizer and evaluation stay float32; about 4x faster on CPUs with AMX)",
        choices=PRECISIONS,
    )

    def __post_init__(self) -> None:
        validate(self)


def mlp(sizes: tuple[int, ...], last_bias: bool = True) -> nn.Sequential:
    """Linear layers with ReLU between them; the last layer is linear."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = i == len(sizes) - 2
        layers.append(nn.Linear(a, b, bias=last_bias or not last))
        if not last:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class SplitAutoencoder(nn.Module):
    """Encoder 784-2048-512-32 (last layer without bias), decoder(s), two certificates.

    Args:
        separate_decoders: one decoder per latent half instead of one shared decoder.
        hidden: the encoder's hidden widths; decoders and certificates mirror them. The paper
            uses (2048, 512); smaller widths only serve fast tests.

    Attributes:
        encoder: ``[B, 784] -> [B, 32]``.
        decoder: ``[B, 32] -> [B, 784]`` (shared decoder), or ``None``.
        decoders: two ``[B, 16] -> [B, 784]`` decoders (separate decoders), or ``None``.
        certificates: two ``[B, 16] -> [B, 784]`` decoders; ``certificates[h]`` reads half h.
    """

    def __init__(self, separate_decoders: bool = False, hidden: tuple[int, ...] = (2048, 512)):
        super().__init__()
        self.separate_decoders = separate_decoders
        hidden = tuple(hidden)
        back = hidden[::-1]
        self.encoder = mlp((IMAGE_DIM, *hidden, LATENT_DIM), last_bias=False)
        if separate_decoders:
            self.decoder = None
            self.decoders = nn.ModuleList(mlp((HALF, *back, IMAGE_DIM)) for _ in range(2))
        else:
            self.decoder = mlp((LATENT_DIM, *back, IMAGE_DIM))
            self.decoders = None
        self.certificates = nn.ModuleList(mlp((HALF, *back, IMAGE_DIM)) for _ in range(2))

    def halves(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return z[:, :HALF], z[:, HALF:]

    def decode(self, z: Tensor, group: Tensor) -> Tensor:
        """``z [B, 32]``, ``group [B]`` -> reconstruction ``[B, 784]``."""
        if self.decoder is not None:
            return self.decoder(z)
        a, b = self.halves(z)
        # both decoders run on the whole batch so no data-dependent indexing (and no GPU sync)
        # is needed; the unselected output receives no gradient.
        return torch.where((group == 0).unsqueeze(-1), self.decoders[0](a), self.decoders[1](b))

    def certify(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Certificate reconstructions from the two detached halves, each ``[B, 784]``."""
        a, b = self.halves(z.detach())
        return self.certificates[0](a), self.certificates[1](b)

    def autoencoder_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("certificates.")]


def digit_group(labels: Tensor) -> Tensor:
    """Digits ``[B]`` -> groups ``[B]`` (0 for digits 0-4, 1 for 5-9)."""
    return (labels >= 5).long()


def route_table_for(routing: str) -> RouteTable | None:
    """The latent route table of a routing name (rows indexed by digit group)."""
    if routing == "split":
        return RouteTable.from_slices(LATENT_DIM, {0: slice(0, HALF), 1: slice(HALF, LATENT_DIM)})
    if routing == "overlap":
        return RouteTable.from_slices(
            LATENT_DIM, {0: slice(0, LATENT_DIM), 1: slice(HALF, LATENT_DIM)}
        )
    if routing == "none":
        return None
    raise ValueError(f"routing must be one of {list(ROUTINGS)}, got {routing!r}")


def to_pixels(images: Tensor) -> Tensor:
    """``uint8 [B, 784]`` -> ``float32 [B, 784]`` in [-1, 1]."""
    return images.to(torch.float32) * (2.0 / 255.0) - 1.0


def pearson_cross_abs(
    a: Tensor, b: Tensor, weight: Tensor | None = None, eps: float = 1e-6
) -> Tensor:
    """Mean absolute Pearson correlation between every dim of ``a`` and every dim of ``b``.

    Args:
        a: ``[B, Da]``; b: ``[B, Db]``.
        weight: ``[B]`` sample weights (0 excludes a sample), or ``None``.
        eps: added to the variances so constant dims give a finite (zero) correlation.

    Returns:
        A scalar: ``mean_{i,j} |corr(a[:, i], b[:, j])|``.
    """
    if weight is None:
        weight = torch.ones(a.shape[0], dtype=a.dtype, device=a.device)
    w = weight.unsqueeze(-1)
    n = weight.sum().clamp_min(1.0)
    ac = a - (w * a).sum(0) / n
    bc = b - (w * b).sum(0) / n
    cov = (w * ac).T @ bc / n
    sa = ((w * ac.square()).sum(0) / n + eps).sqrt()
    sb = ((w * bc.square()).sum(0) / n + eps).sqrt()
    return (cov / (sa.unsqueeze(-1) * sb.unsqueeze(0))).abs().mean()


def split_losses(
    model: SplitAutoencoder,
    x: Tensor,
    labels: Tensor,
    setting: SplitSetting,
    table: RouteTable | None = None,
    train_mask: Tensor | None = None,
    weights: Tensor | None = None,
) -> dict[str, Tensor]:
    """All training losses for one batch.

    Args:
        x: ``[B, 784]`` pixels in [-1, 1].
        labels: ``[B]`` digits.
        table: the latent route table (``route_table_for(setting.routing)``), indexed by
            digit group; ``None``: no routing.
        train_mask: ``[B]`` float, 1 where the digit is in ``setting.train_digits``.
        weights: ``[B, 32]`` routing weights already looked up (overrides ``table``).

    Returns:
        ``total`` (what to minimize) and its parts ``recon``, ``l1``, ``corr``,
        ``certificate`` (sum of the two certificates' pixel MAE), all scalars.
    """
    group = digit_group(labels)
    # float32 latent even under bf16 autocast: the L1, correlation and routing arithmetic stays
    # exact (a no-op in float32)
    z = model.encoder(x).float()
    if weights is None and table is not None:
        weights = table(group)
    routed = z if weights is None else scale_gradient(z, weights)
    recon = model.decode(routed, group)
    if train_mask is None:
        train_mask = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
    n = train_mask.sum().clamp_min(1.0)
    rec = ((recon - x).abs().mean(-1) * train_mask).sum() / n
    l1 = (z.abs().sum(-1) * train_mask).sum() / n
    a, b = model.halves(z)
    corr = pearson_cross_abs(a, b, train_mask) if setting.corr > 0 else z.new_zeros(())
    cert_a, cert_b = model.certify(z)
    cert = (cert_a - x).abs().mean() + (cert_b - x).abs().mean()
    total = rec + setting.l1 * l1 + setting.corr * corr + cert
    return {"total": total, "recon": rec, "l1": l1, "corr": corr, "certificate": cert}


def build_model(
    setting: SplitSetting,
    seed: int,
    device: torch.device | str,
    hidden: tuple[int, ...] = (2048, 512),
) -> SplitAutoencoder:
    """A freshly initialized model; the global RNG state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SplitAutoencoder(setting.separate_decoders, hidden)
    return model.to(device)


def train_split(
    setting: SplitSetting,
    config: TrainConfig,
    images: Tensor,
    labels: Tensor,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    on_model: Callable[[SplitAutoencoder], None] | None = None,
) -> SplitAutoencoder:
    """Train the split autoencoder and its certificates.

    Args:
        images: ``uint8 [N, 784]``; kept where it is if already on ``config.device`` (put the
            whole data set on the GPU once: batches are sliced from it, no DataLoader).
        labels: ``[N]`` digits.
        on_epoch: called after every epoch with ``(epoch, mean losses)``; the only place that
            synchronizes with the device.
        on_model: called once with the freshly built model before training (lets ``on_epoch``
            evaluate it mid-training).

    Returns:
        The trained model (in eval mode).
    """
    device = torch.device(config.device)
    images = images.to(device)
    labels = labels.to(device)
    if config.train_subset is not None:
        images, labels = images[: config.train_subset], labels[: config.train_subset]
    model = build_model(setting, config.seed, device, config.hidden)
    if on_model is not None:
        on_model(model)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    table = route_table_for(setting.routing)
    allowed = torch.zeros(10, dtype=torch.float32, device=device)
    allowed[list(setting.train_digits)] = 1.0
    gen = torch.Generator(device=device).manual_seed(config.seed)
    bf16 = config.precision == "bf16"
    n = images.shape[0]
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=gen, device=device)
        sums: dict[str, Tensor] = {}
        steps = 0
        for start in range(0, n, config.batch_size):
            idx = order[start : start + config.batch_size]
            y = labels[idx]
            # groups are 0/1 by construction: skip the range check's per-step device sync
            weights = None if table is None else table(digit_group(y), check=False)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                losses = split_losses(
                    model, to_pixels(images[idx]), y, setting, train_mask=allowed[y],
                    weights=weights,
                )
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            optimizer.step()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v.detach()
            steps += 1
        if on_epoch is not None or epoch == config.epochs - 1:
            means = {k: float(v) / steps for k, v in sums.items()}
            log.debug("epoch %d: %s", epoch, means)
            if on_epoch is not None:
                on_epoch(epoch, means)
    model.eval()
    return model


@torch.no_grad()
def evaluate_split(
    model: SplitAutoencoder, images: Tensor, labels: Tensor, batch_size: int = 4096
) -> dict[str, Any]:
    """Per-group reconstruction losses of the decoder and both certificates.

    Losses are per-image means over pixels on the [-1, 1] scale, averaged over the images of
    a digit group.

    Returns:
        ``{"decoder" | "certificate_0" | "certificate_1": {"mse" | "mae": [group 0, group 1]}}``.
    """
    device = next(model.parameters()).device
    images, labels = images.to(device), labels.to(device)
    names = ("decoder", "certificate_0", "certificate_1")
    sums = {k: torch.zeros(2, 2, dtype=torch.float64, device=device) for k in names}
    counts = torch.zeros(2, dtype=torch.float64, device=device)
    for start in range(0, images.shape[0], batch_size):
        x = to_pixels(images[start : start + batch_size])
        group = digit_group(labels[start : start + batch_size])
        z = model.encoder(x)
        outs = (model.decode(z, group), *model.certify(z))
        onehot = nn.functional.one_hot(group, 2).to(torch.float64)
        counts += onehot.sum(0)
        for name, out in zip(names, outs):
            err = out - x
            per = torch.stack([err.square().mean(-1), err.abs().mean(-1)], 0).to(torch.float64)
            sums[name] += per @ onehot
    counts = counts.clamp_min(1.0)
    return {
        name: {"mse": (s[0] / counts).tolist(), "mae": (s[1] / counts).tolist()}
        for name, s in sums.items()
    }


@torch.no_grad()
def latent_diagnostics(
    model: SplitAutoencoder, images: Tensor, labels: Tensor, batch_size: int = 4096
) -> dict[str, Any]:
    """How large each latent half is and how much the decoder relies on it, per digit group.

    Returns:
        ``rms``: ``[half][group]`` root mean square of the half's latent values;
        ``decoder_mse``: the decoder's per-image MSE ``[group]``;
        ``decoder_mse_without``: ``[half][group]`` the decoder's MSE when that half is replaced
        by its mean over all images (the larger, the more the decoder needs that half).
    """
    device = next(model.parameters()).device
    images, labels = images.to(device), labels.to(device)
    zs, groups = [], []
    for start in range(0, images.shape[0], batch_size):
        zs.append(model.encoder(to_pixels(images[start : start + batch_size])))
        groups.append(digit_group(labels[start : start + batch_size]))
    z, group = torch.cat(zs), torch.cat(groups)
    onehot = nn.functional.one_hot(group, 2).to(torch.float64)
    counts = onehot.sum(0).clamp_min(1.0)

    def per_group(values: Tensor) -> list[float]:
        return ((values.to(torch.float64) @ onehot) / counts).tolist()

    def decoder_mse(latent: Tensor) -> list[float]:
        errs = []
        for start in range(0, latent.shape[0], batch_size):
            sl = slice(start, start + batch_size)
            out = model.decode(latent[sl], group[sl])
            errs.append((out - to_pixels(images[sl])).square().mean(-1))
        return per_group(torch.cat(errs))

    rms, without = [], []
    for h in range(2):
        dims = slice(h * HALF, (h + 1) * HALF)
        rms.append([v**0.5 for v in per_group(z[:, dims].square().mean(-1))])
        ablated = z.clone()
        ablated[:, dims] = z[:, dims].mean(0)
        without.append(decoder_mse(ablated))
    return {"rms": rms, "decoder_mse": decoder_mse(z), "decoder_mse_without": without}

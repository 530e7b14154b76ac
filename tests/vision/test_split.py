"""The split autoencoder: routing of the reconstruction gradient, detached certificates,
regularizers, presets and configs."""

from __future__ import annotations

import pytest
import torch

from oversight_gr.vision.split import (
    HALF,
    SplitAutoencoder,
    SplitSetting,
    TrainConfig,
    build_model,
    evaluate_split,
    latent_diagnostics,
    pearson_cross_abs,
    route_table_for,
    split_losses,
    train_split,
)
from oversight_gr.vision.table2 import TABLE2, format_table, mean_ci, resolve, summarize


# the routing properties do not depend on the widths; the paper's sizes are checked separately
SMALL = (128, 64)


def _batch(n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 784, generator=g) * 2 - 1
    labels = torch.arange(n) % 10
    return x, labels


def _latent_grad(model, x, labels, setting, key="recon"):
    captured = {}

    def hook(_m, _i, out):
        out.retain_grad()
        captured["z"] = out

    handle = model.encoder.register_forward_hook(hook)
    try:
        losses = split_losses(model, x, labels, setting, route_table_for(setting.routing))
    finally:
        handle.remove()
    losses[key].backward()
    return captured["z"].grad


@pytest.mark.parametrize("separate", [False, True])
def test_reconstruction_gradient_reaches_only_the_routed_half(separate):
    setting = SplitSetting(separate_decoders=separate)
    model = build_model(setting, seed=0, device="cpu", hidden=SMALL)
    x, labels = _batch()
    grad = _latent_grad(model, x, labels, setting)
    low, high = labels < 5, labels >= 5
    # digits 0-4: nothing reaches dims 16-31; digits 5-9: nothing reaches dims 0-15
    assert torch.count_nonzero(grad[low][:, HALF:]) == 0
    assert torch.count_nonzero(grad[high][:, :HALF]) == 0
    assert grad[low][:, :HALF].abs().sum() > 0
    assert grad[high][:, HALF:].abs().sum() > 0


def test_overlap_routing_and_no_routing():
    x, labels = _batch()
    setting = SplitSetting(routing="overlap")
    grad = _latent_grad(build_model(setting, 0, "cpu", SMALL), x, labels, setting)
    assert torch.count_nonzero(grad[labels >= 5][:, :HALF]) == 0
    assert (grad[labels < 5].abs().sum(0) > 0).all()  # 0-4 reach all 32 dims
    setting = SplitSetting(routing="none")
    grad = _latent_grad(build_model(setting, 0, "cpu", SMALL), x, labels, setting)
    assert (grad[labels >= 5][:, :HALF].abs().sum(0) > 0).all()


def test_decoder_sees_all_dims_in_forward():
    # routing changes gradients only: the reconstruction depends on both halves
    setting = SplitSetting()
    model = build_model(setting, 0, "cpu", SMALL)
    x, labels = _batch(4)
    z = model.encoder(x)
    z2 = z.clone()
    z2[:, HALF:] = 0
    assert not torch.allclose(model.decode(z, labels >= 5), model.decode(z2, labels >= 5))


def test_certificate_training_leaves_encoder_unchanged():
    setting = SplitSetting()
    model = build_model(setting, 0, "cpu", SMALL)
    x, labels = _batch()
    losses = split_losses(model, x, labels, setting, route_table_for("split"))
    losses["certificate"].backward()
    for name, p in model.named_parameters():
        if name.startswith("certificates."):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None or torch.count_nonzero(p.grad) == 0, name
    before = {n: p.detach().clone() for n, p in model.encoder.named_parameters()}
    cert_before = model.certificates[1][0].weight.detach().clone()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=5e-5)
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        split_losses(model, x, labels, setting, route_table_for("split"))["certificate"].backward()
        opt.step()
    for n, p in model.encoder.named_parameters():
        assert torch.equal(p, before[n]), n
    assert not torch.equal(model.certificates[1][0].weight, cert_before)


def test_filtered_digits_do_not_train_the_autoencoder():
    setting = SplitSetting(routing="none", l1=1e-3, train_digits=(5, 6, 7, 8, 9))
    model = build_model(setting, 0, "cpu", SMALL)
    x, labels = _batch()
    mask = (labels >= 5).float()
    only_low = labels < 5
    losses = split_losses(model, x[only_low], labels[only_low], setting, None, mask[only_low])
    (losses["recon"] + losses["l1"] + losses["corr"]).backward()
    for p in model.autoencoder_parameters():
        assert p.grad is None or torch.count_nonzero(p.grad) == 0


def test_pearson_cross_abs():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=g)
    full = pearson_cross_abs(a[:, :1], -3 * a[:, :1] + 2)
    assert full == pytest.approx(1.0, abs=1e-4)
    assert pearson_cross_abs(a, torch.randn(4000, 3, generator=g)) < 0.05
    const = pearson_cross_abs(a, torch.ones(4000, 2))
    assert torch.isfinite(const) and const < 1e-3
    w = torch.zeros(4000)
    w[:2000] = 1
    b = torch.cat([a[:2000, :1], torch.randn(2000, 1, generator=g)])
    assert pearson_cross_abs(a[:, :1], b, w) == pytest.approx(1.0, abs=1e-4)


def test_model_shapes_and_bias():
    model = SplitAutoencoder()
    assert [m.out_features for m in model.encoder if hasattr(m, "out_features")] == [2048, 512, 32]
    assert model.encoder[-1].bias is None
    assert [m.out_features for m in model.certificates[0] if hasattr(m, "out_features")] == [
        512, 2048, 784]
    assert model.certificates[0][0].in_features == 16


def test_configs_validate():
    with pytest.raises(ValueError, match="routing"):
        SplitSetting(routing="diagonal")
    with pytest.raises(ValueError, match="separate_decoders"):
        SplitSetting(routing="none", separate_decoders=True)
    with pytest.raises(ValueError, match="l1"):
        SplitSetting(l1=-1.0)
    with pytest.raises(ValueError, match="train_digits"):
        SplitSetting(train_digits=(3, 11))
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)


def test_presets_and_table():
    assert sorted(TABLE2) == list(range(1, 11))
    assert TABLE2[8].setting.train_digits == (5, 6, 7, 8, 9)
    assert TABLE2[4].setting.l1 == 0 and TABLE2[4].setting.corr == 0
    assert [p.number for p in resolve([10, "routing", "4"])] == [10, 1, 4]
    with pytest.raises(ValueError, match="unknown"):
        resolve([11])
    mean, ci = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and ci == pytest.approx(4.303 / 3**0.5, rel=1e-3)
    result = {"certificate_1": {"mse": [0.3, 0.1], "mae": [0.5, 0.2]}}
    table = format_table([(TABLE2[1], summarize([result, result]))])
    assert "| 1 | routing | 0.300 ± 0.000 | 0.100 ± 0.000 | 0.32 / 0.08 |" in table


def test_training_is_seeded_and_evaluates_per_group():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 784), dtype=torch.uint8, generator=g)
    labels = torch.arange(64) % 10
    cfg = TrainConfig(epochs=2, batch_size=32, seed=3, hidden=(64, 32))
    m1 = train_split(SplitSetting(), cfg, images, labels)
    m2 = train_split(SplitSetting(), cfg, images, labels)
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p1, p2)
    result = evaluate_split(m1, images, labels, batch_size=50)
    assert set(result) == {"decoder", "certificate_0", "certificate_1"}
    assert all(len(v) == 2 for r in result.values() for v in r.values())


def test_bf16_autocast_keeps_routing_exact():
    # under bf16 autocast the routed-away half still gets exactly zero gradient
    setting = SplitSetting()
    model = build_model(setting, seed=0, device="cpu", hidden=SMALL)
    x, labels = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        grad = _latent_grad(model, x, labels, setting)
    assert torch.count_nonzero(grad[labels < 5][:, HALF:]) == 0
    assert torch.count_nonzero(grad[labels >= 5][:, :HALF]) == 0
    assert grad[labels >= 5][:, HALF:].abs().sum() > 0


def test_precision_option():
    assert TrainConfig().precision == "fp32"  # the paper's (and the default) arithmetic
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp16")
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 784), dtype=torch.uint8, generator=g)
    labels = torch.arange(64) % 10
    seen = []
    models = {}
    for precision in ("fp32", "bf16"):
        cfg = TrainConfig(epochs=3, batch_size=32, seed=1, hidden=(64, 32), precision=precision)
        models[precision] = train_split(
            SplitSetting(), cfg, images, labels,
            on_epoch=lambda e, losses, p=precision: seen.append((p, e, losses["total"])),
        )
    # bf16 trains a different but close model: same start, losses agree to bf16 precision
    totals = {p: [t for q, _, t in seen if q == p] for p in ("fp32", "bf16")}
    assert totals["fp32"][0] == pytest.approx(totals["bf16"][0], rel=2e-2)
    assert any(not torch.equal(a, b) for a, b in
               zip(models["fp32"].parameters(), models["bf16"].parameters()))
    assert all(p.dtype == torch.float32 for p in models["bf16"].parameters())


def test_latent_diagnostics_measure_what_the_decoder_uses():
    model = build_model(SplitSetting(), 0, "cpu", SMALL).eval()
    with torch.no_grad():
        model.decoder[0].weight[:, HALF:] = 0  # the decoder ignores dims 16-31
        model.encoder[-1].weight[:HALF] *= 30  # a large latent, so the decoder output moves
        model.encoder[-1].weight[HALF:] *= 90  # and dims 16-31 are three times larger
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (50, 784), dtype=torch.uint8, generator=g)
    labels = torch.arange(50) % 10
    d = latent_diagnostics(model, images, labels, batch_size=16)
    assert d["decoder_mse_without"][1] == pytest.approx(d["decoder_mse"], rel=1e-6)
    assert all(abs(w - m) > 1e-3 for w, m in zip(d["decoder_mse_without"][0], d["decoder_mse"]))
    for g_ in range(2):
        assert d["rms"][1][g_] > 2 * d["rms"][0][g_] > 0
    reference = evaluate_split(model, images, labels)["decoder"]["mse"]
    assert d["decoder_mse"] == pytest.approx(reference, rel=1e-6)

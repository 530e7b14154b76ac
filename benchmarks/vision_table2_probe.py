"""One Table 2 setting trained longer, with its latent scale and certificate losses every few
epochs, and at the end a fresh certificate trained for 5 epochs on the frozen latent half
16-31 (raw, and standardized per dim). Written to find out why setting 4 (routing without
regularization) does not reproduce at 25 epochs; see the vision_table2_cpu_long section of
docs/RESULTS.md.

Usage (batch 2048, seed $SEED or 0, bf16 autocast unless PREC=fp32; one torch thread)::

    python benchmarks/vision_table2_probe.py SETTING EPOCHS EVAL_EVERY OUT.json [HIDDEN]
    python benchmarks/vision_table2_probe.py 4 36 4 runs/probe4_36.json
"""
import json, sys, time, torch
from torch import nn
torch.set_num_threads(1); torch.set_flush_denormal(True)
from oversight_gr.vision.data import load_mnist
from oversight_gr.vision.split import (HALF, TrainConfig, evaluate_split, latent_diagnostics,
                                       mlp, to_pixels, train_split)
from oversight_gr.vision.table2 import TABLE2
k, epochs, every, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
hidden = tuple(int(v) for v in sys.argv[5].split(",")) if len(sys.argv) > 5 else (2048, 512)
d = load_mnist()
X, Y = torch.from_numpy(d.train_x), torch.from_numpy(d.train_y)
TX, TY = torch.from_numpy(d.test_x), torch.from_numpy(d.test_y)
cfg = TrainConfig(epochs=epochs, batch_size=2048, precision=__import__("os").environ.get("PREC", "bf16"),
                  seed=int(__import__("os").environ.get("SEED", "0")), hidden=hidden)
built, curve = [], []
t0 = time.time()
def on_epoch(e, losses):
    if (e + 1) % every == 0:
        m = built[0]; m.eval()
        t = evaluate_split(m, TX, TY); L = latent_diagnostics(m, TX, TY); m.train()
        curve.append({"epoch": e + 1, "train": losses, "cert1": t["certificate_1"]["mse"],
                      "cert0": t["certificate_0"]["mse"], "dec": t["decoder"]["mse"], "latent": L})
        print(e + 1, "%.0fs" % (time.time() - t0), "cert1 %.3f/%.3f" % tuple(t["certificate_1"]["mse"]),
              "cert0 %.3f/%.3f" % tuple(t["certificate_0"]["mse"]),
              "rms h1 %.2f/%.2f" % tuple(L["rms"][1]), "l1 %.1f" % losses["l1"], flush=True)
model = train_split(TABLE2[k].setting, cfg, X, Y, on_epoch=on_epoch, on_model=built.append)
with torch.no_grad():
    z = torch.cat([model.encoder(to_pixels(X[i:i + 4096]))[:, HALF:] for i in range(0, len(X), 4096)])
    tz = model.encoder(to_pixels(TX))[:, HALF:]
mu, sd = z.mean(0), z.std(0) + 1e-6
fresh = {}
for name, (a, b) in {"raw": (z, tz), "standardized": ((z - mu) / sd, (tz - mu) / sd)}.items():
    torch.manual_seed(1)
    cert = mlp((HALF, *hidden[::-1], 784))
    opt = torch.optim.Adam(cert.parameters(), lr=1e-3, weight_decay=5e-5)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        for idx in torch.randperm(len(a), generator=g).split(2048):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = (cert(a[idx]).float() - to_pixels(X[idx])).abs().mean()
            opt.zero_grad(); loss.backward(); opt.step()
    with torch.no_grad():
        err = (cert(b) - to_pixels(TX)).square().mean(-1)
    fresh[name] = [err[TY < 5].mean().item(), err[TY >= 5].mean().item()]
    print("fresh certificate on frozen half 16-31,", name, "%.3f/%.3f" % tuple(fresh[name]), flush=True)
json.dump({"setting": k, "epochs": epochs, "curve": curve, "fresh": fresh}, open(out, "w"), indent=1)

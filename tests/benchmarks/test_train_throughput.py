"""benchmarks/train_throughput.py --vs-ref: each timing worker runs the trainer of its own tree."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(num_envs=8, rollout_steps=4, hidden=8, minibatches=2, update_epochs=1)


@pytest.mark.slow
def test_vs_ref_workers_run_the_extracted_revision_and_this_checkout(load_bench, tmp_path):
    bench = load_bench("train_throughput")
    ref = bench.reference_tree("9518d0f")  # the last revision with the written-out backward
    try:
        assert (ref / "oversight_gr" / "agents" / "backprop.py").is_file()
        assert not (ROOT / "oversight_gr" / "agents" / "backprop.py").exists()
        worker = bench._Worker(ref, TINY, "autograd", tmp_path)  # its switch exists there
        total, collect, learn = worker.update()
        worker.close()
        assert total >= collect + learn > 0
        this = bench._Worker(ROOT, TINY, "default", tmp_path)
        assert len(this.update()) == 3
        this.close()
        with pytest.raises(RuntimeError, match="did not start"):  # no switch in this checkout
            bench._Worker(ROOT, TINY, "autograd", tmp_path)
    finally:
        import shutil

        shutil.rmtree(ref, ignore_errors=True)

"""`tbps bench` runs its small CPU version end to end and reports every figure the GPU
version reports; MFU is FLOPs per sample x samples/s / peak."""

import json

from tbps.cli import main


def test_bench_cpu_version(capsys, tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--device", "cpu", "--steps", "2", "--loader-images", "16",
                 "--workers", "0", "--peak-tflops", "1.0", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["device"].startswith("cpu") and printed["torch"]
    t = printed["train"]
    assert t["samples_per_s"] > 0 and t["gflop_per_sample"] > 0 and t["peak_memory_gib"] > 0
    assert abs(t["mfu"] - t["gflop_per_sample"] * 1e9 * t["samples_per_s"] / 1e12) < 1e-3
    assert t["heads"] == ["id", "mlm", "sdm"] and t["context_length"] == 77
    assert printed["encode"]["images_per_s"] > 0
    assert printed["loader"]["images_per_s"] > 0
    for e in printed["eval"]:
        assert e["identical_to_unchunked"] and e["identical_across_chunks"]
        assert e["ms"] > 0 and 0 < e["R1"] <= 100
        # IRRA's rank() beside ours: the same R@1 (no ties in random data) and mAP
        assert e["irra_R1"] == e["R1"] and abs(e["irra_mAP"] - e["mAP"]) < 0.01
        assert e["product_ms"] > 0 and e["ranking_only_ms"] > 0 and e["irra_rank_ms"] > 0
        assert e["extra_memory_gib"] is not None and e["extra_memory_gib"] >= 0


def test_rescoring_benchmark_runs_small():
    import torch

    from tbps.bench.evaluation import bench_rescoring

    out = bench_rescoring(torch.device("cpu"), 120, 60, dim=32, top_k=10, repeats=1)
    assert out["with_rescoring_ms"] > 0 and out["global_only_ms"] > 0 and out["ratio"] > 0
    assert out["floor_ratio"] > 1 and out["product_ms"] >= 0 and out["topk_ms"] >= 0  # µs here


def test_irra_reference_in_blocks_equals_the_whole():
    import torch

    from tbps.bench.evaluation import irra_rank, irra_rank_in_blocks, synthetic_features

    q, qp, g, gp = synthetic_features(300, 120, 16, torch.device("cpu"))
    sim = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(g, dim=-1).t()
    whole, blocks = irra_rank(sim, qp, gp), irra_rank_in_blocks(sim, qp, gp, block=64)
    assert torch.allclose(whole[0], blocks[0], atol=1e-4)
    assert abs(whole[1] - blocks[1]) < 1e-4 and abs(whole[2] - blocks[2]) < 1e-4


def test_gpu_configuration_has_irras_heads_exactly():
    """The GPU benchmark measures IRRA's model: its heads' settings equal the irra_cuhk
    recipe's, the default experiment's CPU economies (MLM on a quarter of the batch, a
    one-layer cross-former, tau 0.2) undone."""
    from tbps.bench.train_step import IRRA_GPU, IRRA_HEADS

    bench = compose_experiment_for_bench(IRRA_GPU + IRRA_HEADS)
    irra = compose_experiment_for_bench([], "irra_cuhk")
    assert bench.heads == irra.heads
    assert list(bench.data.image_size) == list(irra.data.image_size) == [384, 128]


def compose_experiment_for_bench(overrides, name="synthetic"):
    from pathlib import Path

    from tbps.config import compose_experiment

    folder = Path(__file__).resolve().parent.parent / "experiments"
    return compose_experiment(name, overrides, folder=folder)


def test_bench_measures_the_checkpointed_step(capsys):
    assert main(["bench", "--device", "cpu", "--only", "train", "--steps", "1",
                 "--batch-size", "2", "--grad-checkpointing"]) == 0
    train = json.loads(capsys.readouterr().out)["train"]
    assert train["grad_checkpointing"] is True and train["samples_per_s"] > 0


def test_bench_profiles_the_step(capsys):
    """--profile: the step's wall time, the operators' own time and the heaviest ones,
    ranked (on the CPU no kernel launches to count)."""
    assert main(["bench", "--device", "cpu", "--only", "train", "--steps", "1",
                 "--batch-size", "2", "--profile"]) == 0
    p = json.loads(capsys.readouterr().out)["train"]["profile"]
    assert p["steps"] == 3 and p["wall_ms_per_step"] > 0 and p["busy_ms_per_step"] > 0
    assert p["kernel_launches_per_step"] is None and p["busy_on"] == "cpu operators"
    times = [t["ms_per_step"] for t in p["top"]]
    assert len(times) == 15 and times == sorted(times, reverse=True)
    assert any(t["op"] in ("aten::mm", "aten::addmm", "aten::bmm") for t in p["top"])

"""Correct at every scale, checked on the CPU with gloo: contrastive losses and their
gradients over two processes equal one process over the whole batch; `tbps eval` gives the
same metrics with 1 and 2 processes on a gallery that does not divide by 2; training ranks
see disjoint data that reshuffles per epoch; the multi-node configuration instantiates."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.multiprocessing as mp

from tbps.heads.base import HeadContext
from tbps.types import EncoderOutput
import spawned

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
CTX = HeadContext(embed_dim=16, num_classes=6, vocab_size=50, mask_id=4, pad_id=0,
                  special_ids=(0, 1, 2, 3, 4))
B = 12


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _heads():
    from tbps.heads.cmpm import CMPMHead
    from tbps.heads.itc import ITCHead
    from tbps.heads.sdm import SDMHead

    return {"sdm": SDMHead(CTX, temperature=0.05), "itc": ITCHead(CTX, temperature=0.05),
            "cmpm": CMPMHead(CTX)}


def _inputs():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(B, 16, generator=g), torch.randn(B, 16, generator=g),
            torch.randint(0, 6, (B,), generator=g))


def _losses(image, text, pid):
    out = {}
    for name, head in _heads().items():
        img, txt = image.clone().requires_grad_(), text.clone().requires_grad_()
        enc = EncoderOutput(image_tokens=None, text_tokens=None, image_global=img,
                            text_global=txt, text_mask=None, extra_text={})
        loss = head(enc, {"pid": pid})[f"loss_{name}"]
        loss.backward()
        out[name] = (loss.detach(), img.grad, txt.grad)
    return out


def _rank_losses(rank, world, port, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    image, text, pid = _inputs()
    part = slice(rank * B // world, (rank + 1) * B // world)
    torch.save(_losses(image[part], text[part], pid[part]), f"{out}/rank{rank}.pt")
    spawned.leave()


def test_gathered_losses_and_gradients_equal_one_process(tmp_path):
    mp.spawn(_rank_losses, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    single = _losses(*_inputs())
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for name, (loss, g_img, g_txt) in single.items():
        for r, got in enumerate(ranks):
            torch.testing.assert_close(got[name][0], loss)  # every rank sees the global loss
        # all_gather's backward sums the ranks' gradients; DDP then averages over 2 ranks
        torch.testing.assert_close(torch.cat([ranks[0][name][1], ranks[1][name][1]]) / 2, g_img)
        torch.testing.assert_close(torch.cat([ranks[0][name][2], ranks[1][name][2]]) / 2, g_txt)


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_synth, tmp_path_factory):
    from conftest import tiny_overrides

    from tbps.cli import main

    run = tmp_path_factory.mktemp("ddp_run")
    os.environ["TBPS_EXPERIMENTS"] = str(EXPERIMENTS)
    os.environ.pop("TBPS_RUN_DIR", None)
    assert main(["train", "experiment=synthetic", *tiny_overrides(tiny_synth, run),
                 "trainer.max_epochs=1"]) == 0
    return run


def _eval(ckpt: Path, devices: int, root) -> dict:
    """`tbps eval` of ``ckpt``: one process in this one (the reference), two in a subprocess
    that DDP spawns from."""
    from tbps.cli import main

    args = ["eval", "experiment=synthetic", f"eval.ckpt={ckpt}", f"data.root={root}",
            "data.num_workers=0", "data.eval_batch_size=7", f"trainer.devices={devices}"]
    os.environ["TBPS_EXPERIMENTS"] = str(EXPERIMENTS)
    os.environ.pop("TBPS_RUN_DIR", None)
    if devices == 1:
        assert main(args) == 0
    else:
        env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, "-m", "tbps.cli", *args, "trainer.strategy=ddp"],
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert f"MEMBER: {devices}/{devices}" in done.stdout + done.stderr  # really 2 processes
    return json.loads((ckpt.parent.parent / "metrics_eval.json").read_text())


def test_eval_identical_with_one_and_two_processes(tiny_checkpoint, tiny_synth):
    from tbps.data.records import read_cuhk_pedes

    test = read_cuhk_pedes(tiny_synth / "CUHK-PEDES")["test"]
    assert len(test.image_paths) % 2 == 1 or len(test.captions) % 7  # uneven shards
    ckpt = tiny_checkpoint / "checkpoints" / "best.ckpt"
    one, two = _eval(ckpt, 1, tiny_synth), _eval(ckpt, 2, tiny_synth)
    assert set(one) == set(two)
    for k in one:
        assert two[k] == pytest.approx(one[k], abs=1e-6), k


def test_eval_with_rescoring_identical_with_one_and_two_processes(tiny_synth, tmp_path):
    """ACSA's kept tokens and phrase masks are gathered like the features: the fused and
    the global metrics and the fusion weight are the same with 1 and 2 processes."""
    from conftest import tiny_overrides

    from tbps.cli import main

    os.environ["TBPS_EXPERIMENTS"] = str(EXPERIMENTS)
    os.environ.pop("TBPS_RUN_DIR", None)
    args = [a for a in tiny_overrides(tiny_synth, tmp_path) if not a.startswith("heads.mlm")]
    assert main(["train", "experiment=acsa_synthetic", *args, "trainer.max_epochs=1",
                 "heads.acsa.top_k=5"]) == 0
    ckpt = tmp_path / "checkpoints" / "best.ckpt"
    one, two = _eval(ckpt, 1, tiny_synth), _eval(ckpt, 2, tiny_synth)
    assert "test/global/R1" in one and "test/fusion_weight" in one
    assert set(one) == set(two)
    for k in one:
        assert two[k] == pytest.approx(one[k], abs=1e-6), k


class Recorder(L.Callback):
    """Writes which training pairs and identities each rank sees, per epoch and step."""

    def __init__(self, out) -> None:
        self.out = str(out)

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        path = Path(self.out) / f"rank{trainer.global_rank}.jsonl"
        with path.open("a") as f:
            f.write(json.dumps({"epoch": trainer.current_epoch, "step": batch_idx,
                                "index": batch["index"].tolist(),
                                "pid": batch["pid"].tolist()}) + "\n")


def _seen(folder, rank):
    return [json.loads(line) for line in (Path(folder) / f"rank{rank}.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("sampler", ["random", "identity"])
def test_ranks_see_disjoint_data_reshuffled_per_epoch(tiny_synth, tmp_path, sampler):
    from conftest import tiny_overrides
    from omegaconf import OmegaConf

    from tbps.config import compose_experiment
    from tbps.data.tokenizer import CaptionTokenizer
    from tbps.model.module import TBPSModule
    from tbps.train import build_data

    cfg = compose_experiment("synthetic", [*tiny_overrides(tiny_synth, tmp_path / "run"),
                                           f"data.sampler={sampler}", "data.num_instances=2",
                                           "data.batch_size=8"], folder=EXPERIMENTS)
    dm = build_data(cfg)
    tok = CaptionTokenizer.train(dm.records["train"].captions, 300, 32)
    dm.set_tokenizer(tok)
    module = TBPSModule(OmegaConf.to_container(cfg, resolve=True), tok.to_json(), dm.num_train_ids)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=2,
                        logger=False, enable_checkpointing=False, limit_val_batches=0,
                        enable_progress_bar=False, callbacks=[Recorder(tmp_path)])
    trainer.fit(module, datamodule=dm)
    r0, r1 = _seen(tmp_path, 0), _seen(tmp_path, 1)
    assert len(r0) == len(r1) > 0  # same number of steps on both ranks
    for epoch in (0, 1):
        a = [x for x in r0 if x["epoch"] == epoch]
        b = [x for x in r1 if x["epoch"] == epoch]
        if sampler == "random":  # disjoint pairs across ranks within an epoch
            ia = {i for x in a for i in x["index"]}
            ib = {i for x in b for i in x["index"]}
            assert ia and not ia & ib
        else:  # distinct identities on the two ranks in every step, P x K batches
            for xa, xb in zip(a, b):
                assert not set(xa["pid"]) & set(xb["pid"])
                assert all(xa["pid"].count(p) == 2 for p in xa["pid"])
    first = [x["index"] for x in r0 if x["epoch"] == 0]
    second = [x["index"] for x in r0 if x["epoch"] == 1]
    assert first != second  # reshuffled


def test_multi_node_configuration_instantiates(monkeypatch):
    """Two nodes of two processes as torchrun would start the last one: Lightning reads the
    cluster from the environment, we add no process-group code of our own."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from tbps.config import compose_experiment

    # The Trainer sets the process-wide rank for rank-zero-only logging; put it back after.
    monkeypatch.setattr(rank_zero_only, "rank", getattr(rank_zero_only, "rank", 0))
    for k, v in {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "WORLD_SIZE": "4",
                 "RANK": "3", "LOCAL_RANK": "1", "GROUP_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                 "TORCHELASTIC_RUN_ID": "tbps-test"}.items():
        monkeypatch.setenv(k, v)
    cfg = compose_experiment("synthetic", ["trainer.devices=2", "trainer.num_nodes=2",
                                           "trainer.strategy=ddp"], folder=EXPERIMENTS)
    trainer = L.Trainer(**cfg.trainer, logger=False)
    assert (trainer.world_size, trainer.global_rank, trainer.node_rank) == (4, 3, 1)
    assert trainer.num_nodes == 2 and trainer.num_devices == 2

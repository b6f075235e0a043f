"""ACSA's own backbone (encoder=swin_bert): a short run at random weights, local weights
loaded exactly (a Swin-T checkpoint file, a BERT folder with its vocabulary), and files
that do not hold those weights refused with the key named."""

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides

from tbps.cli import main
from tbps.errors import ConfigError
from tbps.model.swin_bert import SwinTokens, build_bert, load_bert_weights, load_swin_weights

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
SMALL_BERT = {"model": "bert", "frozen": True, "hidden_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 2, "intermediate_size": 128}


@pytest.fixture(autouse=True)
def _experiments(monkeypatch):
    monkeypatch.setenv("TBPS_EXPERIMENTS", str(EXPERIMENTS))
    monkeypatch.delenv("TBPS_RUN_DIR", raising=False)


def _args(root, run):
    keep = [a for a in tiny_overrides(root, run) if not a.startswith(("heads.", "encoder."))]
    return ["train", "experiment=acsa_synthetic", "encoder=swin_bert", *keep,
            "data.image_size=[224,224]", "data.batch_size=8", "trainer.max_epochs=1",
            "trainer.max_steps=2"]


def test_swin_bert_runs_at_random_weights(tiny_synth, tmp_path):
    assert main(_args(tiny_synth, tmp_path)) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert 0 <= m["test/R1"] <= 100 and 0 <= m["test/global/R1"] <= 100
    from tbps.model.checkpoint import load_checkpoint

    module = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert module.encoder.grid_size == (7, 7)
    assert not any(p.requires_grad for p in module.encoder.text.parameters())  # frozen


def test_local_weights_load_exactly_and_wrong_files_are_refused(tmp_path):
    swin = SwinTokens("swin_tiny_patch4_window7_224", img_size=(224, 224))
    torch.save({"model": swin.swin.state_dict()}, tmp_path / "swin.pth")
    fresh = SwinTokens("swin_tiny_patch4_window7_224", img_size=(224, 224))
    load_swin_weights(fresh, tmp_path / "swin.pth")
    for (k, a), b in zip(swin.swin.state_dict().items(), fresh.swin.state_dict().values()):
        assert torch.equal(a, b), k
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ConfigError, match="does not hold Swin-T weights"):
        load_swin_weights(fresh, tmp_path / "other.pth")

    bert = build_bert(SMALL_BERT, vocab_size=100, context_length=32, pad_id=0)
    bert.save_pretrained(tmp_path / "bert")
    fresh_bert = build_bert(SMALL_BERT, vocab_size=100, context_length=32, pad_id=0)
    load_bert_weights(fresh_bert, tmp_path / "bert")
    for (k, a), b in zip(bert.state_dict().items(), fresh_bert.state_dict().values()):
        assert torch.equal(a, b), k
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="does not hold BERT weights"):
        load_bert_weights(fresh_bert, tmp_path / "empty")


def test_bert_vocabulary_becomes_the_tokenizer(tmp_path):
    from tbps.data.tokenizer import CaptionTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "man", "in", "red", "jacket",
             "black", "##s", "shoe"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    tok = CaptionTokenizer.bert(tmp_path, context_length=12)
    ids = tok.encode(["A man in red jacket, black shoes"])[0].tolist()
    assert ids[0] == tok.sos_id == 2 and tok.eos_id == 3 and tok.mask_id == 4
    assert tok.decode(ids) .replace(" ##", "").startswith("a man in red jacket")


@pytest.mark.parametrize("key,value", [("encoder.swin_weights", "/nonexistent/swin.pth"),
                                       ("encoder.bert_weights", "/nonexistent/bert")])
def test_missing_weight_paths_exit_2(tiny_synth, tmp_path, capsys, key, value):
    assert main([*_args(tiny_synth, tmp_path), f"{key}={value}"]) == 2
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err

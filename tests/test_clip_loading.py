"""Real CLIP weights: every format against its reference library at ViT-B/16 size, the
position-embedding interpolation, safe loading, and the CLIP tokenizer against open_clip.

The reference models have random weights (nothing can be downloaded here); what is tested is
that our loading reproduces the reference implementation's features (max |diff| <= 1e-4)."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from tbps import DualEncoder
from tbps.errors import ConfigError

open_clip = pytest.importorskip("open_clip")
TOL = 1e-4
CAPTIONS = ["A man in a red coat and black trousers.",
            "The woman carries a white bag; she wears blue jeans & sneakers!"]


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def oc_model():
    torch.manual_seed(0)
    return open_clip.create_model("ViT-B-16", pretrained=None).eval()


def _check(enc, image_ref, text_ref, pixels, label):
    enc.eval()
    with torch.no_grad():
        di = (enc.encode_image(pixels) - image_ref).abs().max().item()
        dt = (enc.encode_text(CAPTIONS) - text_ref).abs().max().item()
    print(f"\n{label}: max |diff| image {di:.2e}, text {dt:.2e}")
    assert di <= TOL and dt <= TOL


def _oc_refs(model, pixels):
    with torch.no_grad():
        tok = open_clip.get_tokenizer("ViT-B-16")
        return model.encode_image(pixels), model.encode_text(tok(CAPTIONS))


def test_open_clip_folder_and_plain_file(oc_model, pixels, tmp_path):
    from safetensors.torch import save_file

    img_ref, txt_ref = _oc_refs(oc_model, pixels)
    sd = {k: v.contiguous() for k, v in oc_model.state_dict().items()}
    folder = tmp_path / "oc"
    folder.mkdir()
    save_file(sd, folder / "open_clip_model.safetensors")
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": {"embed_dim": 512, "quick_gelu": False}}))
    _check(DualEncoder.from_pretrained(folder, image_size=(224, 224)), img_ref, txt_ref,
           pixels, "open_clip folder")
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}},
               tmp_path / "epoch_3.pt")  # an open_clip training checkpoint
    _check(DualEncoder.from_pretrained(tmp_path / "epoch_3.pt", image_size=(224, 224),
                                       act="gelu"), img_ref, txt_ref, pixels, "open_clip .pt")


class _Holder(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _torchscript_archive(sd, path):
    """A TorchScript archive whose state dict has OpenAI's names, like ViT-B-16.pt."""
    root = _Holder()
    for key, value in sd.items():
        *parents, leaf = key.split(".")
        mod = root
        for p in parents:
            if not hasattr(mod, p):
                mod.add_module(p, _Holder())
            mod = getattr(mod, p)
        mod.register_parameter(leaf, nn.Parameter(value.clone(), requires_grad=False))
    torch.jit.script(root).save(str(path))


def test_torchscript_weights_read_as_data_equal_jit_load(tmp_path):
    """The archive reader gives ScriptModule.state_dict(): parameters and buffers of every
    module, not plain tensor attributes; code and foreign classes are never run."""
    import warnings

    from tbps.model.torchscript_archive import read_torchscript_state_dict

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None).eval()
    _torchscript_archive(model.state_dict(), tmp_path / "ViT-B-16.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # jit.load is the reference here only
        reference = torch.jit.load(str(tmp_path / "ViT-B-16.pt")).state_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecation on the way
        ours = read_torchscript_state_dict(tmp_path / "ViT-B-16.pt")
    assert sorted(ours) == sorted(reference)
    assert all(torch.equal(ours[k], reference[k]) and ours[k].dtype == reference[k].dtype
               for k in reference)


def test_openai_torchscript_and_state_dict(pixels, tmp_path):
    torch.manual_seed(1)
    model = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None).eval()  # OpenAI's
    img_ref, txt_ref = _oc_refs(model, pixels)
    _torchscript_archive(model.state_dict(), tmp_path / "ViT-B-16.pt")
    _check(DualEncoder.from_pretrained(tmp_path / "ViT-B-16.pt", image_size=(224, 224)),
           img_ref, txt_ref, pixels, "OpenAI TorchScript")
    torch.save(model.state_dict(), tmp_path / "ViT-B-16-sd.pt")
    _check(DualEncoder.from_pretrained(tmp_path / "ViT-B-16-sd.pt", image_size=(224, 224)),
           img_ref, txt_ref, pixels, "OpenAI state dict")


def _hf_tokenizer_files(folder):
    """vocab.json + merges.txt as Hugging Face's CLIP folders hold them (stock CLIP)."""
    import gzip

    from open_clip.tokenizer import default_bpe

    from tbps.data.clip_bpe import _bytes_to_unicode

    merges = gzip.open(default_bpe()).read().decode().split("\n")[1:49152 - 256 - 2 + 1]
    symbols = _bytes_to_unicode()
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def save_hf_clip(folder, text_width=512, vision_width=768, layers=12, text_heads=8,
                 vision_heads=12, projection=512):
    """A randomly initialised CLIP (ViT-B/16 by default) saved as a Hugging Face folder with
    the stock tokenizer files; returns the model."""
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(projection_dim=projection,
                     text_config={"hidden_size": text_width, "intermediate_size": 4 * text_width,
                                  "num_hidden_layers": layers, "num_attention_heads": text_heads,
                                  "max_position_embeddings": 77, "vocab_size": 49408,
                                  "eos_token_id": 49407, "bos_token_id": 49406},
                     vision_config={"hidden_size": vision_width,
                                    "intermediate_size": 4 * vision_width,
                                    "num_hidden_layers": layers, "num_attention_heads": vision_heads,
                                    "image_size": 224, "patch_size": 16})
    model = CLIPModel(cfg).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    _hf_tokenizer_files(folder)
    return model


def test_hugging_face_folder(pixels, tmp_path):
    torch.manual_seed(2)
    model = save_hf_clip(tmp_path)
    ids = DualEncoder.from_pretrained(tmp_path, image_size=(224, 224)).tokenizer.encode(CAPTIONS)
    with torch.no_grad():
        img_ref = model.get_image_features(pixel_values=pixels)
        txt_ref = model.get_text_features(input_ids=ids)
    img_ref = getattr(img_ref, "pooler_output", img_ref)
    txt_ref = getattr(txt_ref, "pooler_output", txt_ref)
    _check(DualEncoder.from_pretrained(tmp_path, image_size=(224, 224)), img_ref, txt_ref,
           pixels, "Hugging Face folder")


def _bilinear_by_hand(grid: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Half-pixel-centre bilinear resampling of [H, W, C], written out."""
    h, w, _ = grid.shape
    out = np.zeros((out_h, out_w, grid.shape[2]))
    for i in range(out_h):
        y = max((i + 0.5) * h / out_h - 0.5, 0.0)
        y0 = min(int(np.floor(y)), h - 1)
        y1, fy = min(y0 + 1, h - 1), y - y0
        for j in range(out_w):
            x = max((j + 0.5) * w / out_w - 0.5, 0.0)
            x0 = min(int(np.floor(x)), w - 1)
            x1, fx = min(x0 + 1, w - 1), x - x0
            out[i, j] = ((1 - fy) * ((1 - fx) * grid[y0, x0] + fx * grid[y0, x1])
                         + fy * ((1 - fx) * grid[y1, x0] + fx * grid[y1, x1]))
    return out


def test_position_embedding_interpolated_to_24x8(oc_model, tmp_path):
    torch.save(oc_model.state_dict(), tmp_path / "oc.pt")
    enc = DualEncoder.from_pretrained(tmp_path / "oc.pt", act="gelu")  # 384x128 default
    pos = enc.vision.pos_embed[0].detach().numpy()
    src = oc_model.visual.positional_embedding.detach().numpy()
    assert pos.shape == (1 + 24 * 8, 768)
    np.testing.assert_allclose(pos[0], src[0])  # class position untouched
    expect = _bilinear_by_hand(src[1:].reshape(14, 14, -1), 24, 8).reshape(-1, 768)
    np.testing.assert_allclose(pos[1:], expect, atol=1e-5)
    with torch.no_grad():
        out = enc.encode_image(torch.randn(1, 3, 384, 128))
    assert out.shape == (1, 512) and torch.isfinite(out).all()


class NotAWeight:
    pass


def test_unsafe_and_wrong_files_are_refused(tmp_path):
    bad = tmp_path / "pickle.pt"
    torch.save({"weights": NotAWeight()}, bad)  # loading it would run arbitrary unpickling
    with pytest.raises(ConfigError, match="weights_only=True"):
        DualEncoder.from_pretrained(bad)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ConfigError, match="neither a TorchScript archive"):
        DualEncoder.from_pretrained(junk)
    other = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, other)
    with pytest.raises(ConfigError, match="does not look like CLIP weights"):
        DualEncoder.from_pretrained(other)
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE"):
        DualEncoder.from_pretrained("openai/clip-vit-base-patch16")


def _varied_captions() -> list[str]:
    from fake_benchmarks import caption


    rng = np.random.default_rng(0)
    words = ("man woman girl boy he she wears wearing a an the red dark-blue grey t-shirt "
             "jacket jeans shorts skirt backpack handbag shoes sneakers boots hat glasses "
             "long short-sleeved hair ponytail carrying holding walking his her").split()
    punct = [",", ".", "!", "?", ";", ":", "'s", "'re", "(", ")", "-", "/", "&amp;", "\"",
             "'", "...", "1", "23", "456", "2nd", "café", "naïve", "Ünïcödé", "日本",
             "—", "“quoted”", "  ", "\t", "doesn't", "I'm", "ＦＵＬＬ"]
    out = [caption(pid, k) for pid in range(60) for k in range(2)]
    out += ["A Jekyll-and-Hyde look: JEKYLL on the shirt.", "a man reading jekyll"]
    for _ in range(300):
        n = int(rng.integers(3, 40 if rng.random() < 0.9 else 120))
        toks = [str(rng.choice(words if rng.random() < 0.75 else punct)) for _ in range(n)]
        out.append(" ".join(toks).capitalize())
    return out


def test_clip_tokenizer_matches_open_clip():
    from tbps.data.tokenizer import CaptionTokenizer

    captions = _varied_captions()
    ours = CaptionTokenizer.clip().encode(captions)
    ref = open_clip.get_tokenizer("ViT-B-16")(captions)
    assert ours.shape == ref.shape == (len(captions), 77)
    same = (ours == ref).all(1)
    differing = [c for c, s in zip(captions, same.tolist()) if not s]
    # the only difference: open_clip's last merge "jekyll</w>" (id 49405) is our <|mask|>
    assert all("jekyll" in c.lower() for c in differing) and differing
    assert ((ref == 49405).any(1) == ~same).all()
    print(f"\n{int(same.sum())} of {len(captions)} captions identical; the other "
          f"{len(differing)} contain 'jekyll'")
    long = ours[[len(c.split()) > 80 for c in captions]]
    assert (long[:, -1] == 49407).all()  # truncation keeps the end-of-text token last
    assert ours[:, 0].eq(49406).all()

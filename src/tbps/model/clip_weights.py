"""Reading CLIP weights from the formats users have, safely, into our dual encoder.

Sources: an OpenAI CLIP file (TorchScript archive or plain state dict), an open_clip
checkpoint (file, or folder with ``open_clip_config.json``), a Hugging Face CLIP folder
(``config.json`` + safetensors or ``pytorch_model.bin``), or a hub name when online. All are
brought to OpenAI's parameter names (open_clip uses them too), the architecture is read
from the tensor shapes, and the OpenAI names are then mapped to timm's ViT (with timm's own
converter) and to transformers' CLIP text model.

Safety: safetensors where present, ``torch.load(weights_only=True)`` for pickled state
dicts, TorchScript archives read as data (``torchscript_archive``: tensors only, no code run,
no ``torch.jit.load``); anything else is refused with a message.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import ConfigError

# --- reading files -------------------------------------------------------------------------
def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if _is_torchscript(path):
        from .torchscript_archive import read_torchscript_state_dict

        try:
            return read_torchscript_state_dict(path)
        except (ValueError, KeyError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
            raise ConfigError(f"{path} looks like a TorchScript archive but its weights could "
                              f"not be read ({exc}); pass OpenAI's ViT-B-16.pt as downloaded, "
                              "an open_clip checkpoint or a Hugging Face CLIP folder") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle refuses code, or the file is no checkpoint at all
        raise ConfigError(
            f"{path} is neither a TorchScript archive, a safetensors file nor a plain state "
            f"dict that loads with weights_only=True ({type(exc).__name__}: {str(exc)[:200]}). "
            "Pass OpenAI's ViT-B-16.pt, an open_clip checkpoint or a Hugging Face CLIP "
            "folder") from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # open_clip's training checkpoints wrap the weights
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"{path} does not hold a state dict of tensors; pass CLIP weights")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _first(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def read_clip_source(source: str | Path) -> tuple[dict[str, torch.Tensor], dict, Path | None]:
    """-> (state dict in OpenAI names, facts such as the activation, tokenizer folder)."""
    path = Path(source)
    if not path.exists():
        path = _from_hub(str(source))
    if path.is_file():
        sd = _load_file(path)
        facts = {"act": "quick_gelu"} if "visual.conv1.weight" in sd else {}
        cfg = path.parent / "open_clip_config.json"
        if cfg.is_file():
            facts.update(_open_clip_facts(cfg))
        return _to_openai_names(sd, path), facts, path.parent
    hf_cfg, oc_cfg = path / "config.json", path / "open_clip_config.json"
    if oc_cfg.is_file():
        weights = _first(path, ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"))
        if weights:
            return _to_openai_names(_load_file(weights), weights), _open_clip_facts(oc_cfg), path
    if hf_cfg.is_file():
        weights = _first(path, ("model.safetensors", "pytorch_model.bin"))
        if weights is None:
            raise ConfigError(f"{path} has config.json but no model.safetensors or "
                              "pytorch_model.bin; copy the weights into the folder")
        config = json.loads(hf_cfg.read_text())
        facts = {"act": config.get("vision_config", {}).get("hidden_act", "quick_gelu"),
                 "text_act": config.get("text_config", {}).get("hidden_act", "quick_gelu"),
                 "eps": config.get("vision_config", {}).get("layer_norm_eps", 1e-5)}
        return _to_openai_names(_load_file(weights), weights), facts, path
    raise ConfigError(f"{path} is a folder without config.json (Hugging Face CLIP) or "
                      "open_clip_config.json (open_clip); pass the checkpoint file instead")


def _open_clip_facts(cfg_path: Path) -> dict:
    cfg = json.loads(cfg_path.read_text()).get("model_cfg", {})
    return {"act": "quick_gelu" if cfg.get("quick_gelu") else "gelu"}


def _from_hub(name: str) -> Path:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        raise ConfigError(
            f"CLIP weights {name!r}: no such file or folder, and the hub is off "
            "(HF_HUB_OFFLINE=1). Set CLIP_WEIGHTS (or encoder.pretrained) to a local "
            "ViT-B-16.pt, an open_clip checkpoint or a Hugging Face CLIP folder")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(name.removeprefix("hf-hub:")))


# --- naming -------------------------------------------------------------------------------
_HF_LAYER = [("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
             ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")]


def _hf_to_openai(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        m = re.match(r"(vision|text)_model\.encoder\.layers\.(\d+)\.(.*)", k)
        if m:
            tower, n, rest = m.groups()
            prefix = f"{'visual.' if tower == 'vision' else ''}transformer.resblocks.{n}."
            qm = re.match(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)
            if qm:
                qkv.setdefault(f"{prefix}attn.in_proj_{qm.group(2)}", {})[qm.group(1)] = v
                continue
            for a, b in _HF_LAYER:
                rest = rest.replace(a, b)
            out[prefix + rest] = v
            continue
        simple = {
            "vision_model.embeddings.class_embedding": ("visual.class_embedding", False),
            "vision_model.embeddings.patch_embedding.weight": ("visual.conv1.weight", False),
            "vision_model.embeddings.position_embedding.weight": ("visual.positional_embedding", False),
            "visual_projection.weight": ("visual.proj", True),
            "text_model.embeddings.token_embedding.weight": ("token_embedding.weight", False),
            "text_model.embeddings.position_embedding.weight": ("positional_embedding", False),
            "text_projection.weight": ("text_projection", True),
            "logit_scale": ("logit_scale", False)}
        if k in simple:
            name, transpose = simple[k]
            out[name] = v.t() if transpose else v
            continue
        for hf, oa in (("vision_model.pre_layrnorm", "visual.ln_pre"),
                       ("vision_model.post_layernorm", "visual.ln_post"),
                       ("text_model.final_layer_norm", "ln_final")):
            if k.startswith(hf):
                out[k.replace(hf, oa)] = v
    for name, parts in qkv.items():
        out[name] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def _to_openai_names(sd: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    if "visual.conv1.weight" in sd and "token_embedding.weight" in sd:
        return sd
    if "vision_model.embeddings.patch_embedding.weight" in sd:
        return _hf_to_openai(sd)
    if any(k.startswith("visual.trunk") for k in sd):
        raise ConfigError(f"{path} is an open_clip model with a timm image tower; only CLIP "
                          "ViT models with OpenAI's layout are supported")
    raise ConfigError(f"{path} does not look like CLIP weights (expected keys such as "
                      f"visual.conv1.weight or vision_model.*; found {sorted(sd)[:4]} …)")


# --- architecture -------------------------------------------------------------------------
def _count(sd: dict, pattern: str) -> int:
    return len({m.group(1) for k in sd if (m := re.match(pattern, k))})


def infer_architecture(sd: dict[str, torch.Tensor], image_size: tuple[int, int],
                       act: str = "quick_gelu", text_act: str | None = None,
                       eps: float = 1e-5) -> dict:
    """The ``encoder`` config (timm vision kwargs, CLIPTextConfig fields, embed_dim) that
    the weights describe, as OpenAI's ``build_model`` reads it from the shapes."""
    width, _, patch, _ = sd["visual.conv1.weight"].shape
    text_width = sd["ln_final.weight"].shape[0]
    vision = {"model": "vit_base_patch16_clip_224", "img_size": list(image_size),
              "patch_size": int(patch), "embed_dim": int(width),
              "depth": _count(sd, r"visual\.transformer\.resblocks\.(\d+)\."),
              "num_heads": int(width) // 64,
              "mlp_ratio": sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width,
              "act_layer": act}
    text = {"hidden_size": int(text_width),
            "intermediate_size": int(sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
            "num_hidden_layers": _count(sd, r"transformer\.resblocks\.(\d+)\."),
            "num_attention_heads": int(text_width) // 64,
            "hidden_act": text_act or act, "layer_norm_eps": eps}
    return {"vision": vision, "text": text, "embed_dim": int(sd["text_projection"].shape[1]),
            "context_length": int(sd["positional_embedding"].shape[0]),
            "vocab_size": int(sd["token_embedding.weight"].shape[0])}


def resize_pos_embed(pos: torch.Tensor, grid: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """[1 + g*g, C] square-grid position embedding -> [1 + h*w, C], class position kept, the
    grid interpolated as IRRA does (bilinear, align_corners=False)."""
    cls, rest = pos[:1], pos[1:]
    side = int(round(rest.shape[0] ** 0.5))
    if (side, side) == tuple(grid):
        return pos
    img = rest.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    out = F.interpolate(img, size=tuple(grid), mode=mode, align_corners=False)
    return torch.cat([cls, out.permute(0, 2, 3, 1).reshape(-1, pos.shape[1]).to(pos.dtype)])


def to_dual_encoder_state(sd: dict[str, torch.Tensor], arch: dict,
                          pos_interpolation: str = "bilinear", text_prefix: str = "text."
                          ) -> dict[str, torch.Tensor]:
    """OpenAI names -> the state dict of ``DualEncoder`` (vision. / text. / *_proj).
    ``text_prefix`` is where the CLIPTextModel's own names start (transformers versions
    differ on a ``text_model.`` level)."""
    from timm.models.vision_transformer import _convert_openai_clip

    v = arch["vision"]
    grid = (v["img_size"][0] // v["patch_size"], v["img_size"][1] // v["patch_size"])
    sd = dict(sd)
    sd["visual.positional_embedding"] = resize_pos_embed(sd["visual.positional_embedding"],
                                                         grid, pos_interpolation)
    proj = sd.pop("visual.proj")
    out = {f"vision.{k}": t for k, t in _convert_openai_clip(sd, None).items()}
    out["vision_proj.weight"] = proj.t().contiguous()
    out["text_proj.weight"] = sd["text_projection"].t().contiguous()
    t = text_prefix
    out[t + "embeddings.token_embedding.weight"] = sd["token_embedding.weight"]
    out[t + "embeddings.position_embedding.weight"] = sd["positional_embedding"]
    out[t + "final_layer_norm.weight"] = sd["ln_final.weight"]
    out[t + "final_layer_norm.bias"] = sd["ln_final.bias"]
    width = arch["text"]["hidden_size"]
    for n in range(arch["text"]["num_hidden_layers"]):
        src, dst = f"transformer.resblocks.{n}.", f"{t}encoder.layers.{n}."
        for kind in ("weight", "bias"):
            q, k, vv = sd[f"{src}attn.in_proj_{kind}"].split(width)
            out[f"{dst}self_attn.q_proj.{kind}"] = q
            out[f"{dst}self_attn.k_proj.{kind}"] = k
            out[f"{dst}self_attn.v_proj.{kind}"] = vv
            for a, b in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                         ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"),
                         ("mlp.c_proj", "mlp.fc2")):
                out[f"{dst}{b}.{kind}"] = sd[f"{src}{a}.{kind}"]
    return out

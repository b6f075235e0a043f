"""Where the model looks. Attention rollout (Abnar & Zuidema, 2020) over the image
encoder's patch grid, and, for words of a caption, the image regions that the cross-modal
attention of the IRR/MLM head picks (or, for models without one, the patches whose
features are most similar to the words' token features)."""

from __future__ import annotations

import torch

from ..model.module import TBPSModule


def grid_size(module: TBPSModule) -> tuple[int, int]:
    return module.encoder.grid_size


@torch.no_grad()
def attention_rollout(module: TBPSModule, images: torch.Tensor, residual: float = 0.5
                      ) -> torch.Tensor:
    """[B, 3, H, W] -> [B, gh, gw]: how much the class token draws from each patch through
    all layers; each layer's head-averaged attention is mixed with the identity (the
    residual path) and renormalised."""
    vit = module.encoder.vision
    maps: list[torch.Tensor] = []
    hooks, fused = [], []
    for block in vit.blocks:  # timm's fused kernel never forms the attention matrix
        fused.append(block.attn.fused_attn)
        block.attn.fused_attn = False
        hooks.append(block.attn.attn_drop.register_forward_hook(
            lambda _m, _i, out: maps.append(out.mean(1))))
    try:
        vit.forward_features(images)
    finally:
        for h in hooks:
            h.remove()
        for block, f in zip(vit.blocks, fused):
            block.attn.fused_attn = f
    n = maps[0].shape[-1]
    rollout = torch.eye(n).expand(images.shape[0], n, n).to(images.device)
    for a in maps:
        a = residual * a + (1 - residual) * torch.eye(n, device=a.device)
        rollout = (a / a.sum(-1, keepdim=True)) @ rollout
    gh, gw = grid_size(module)
    prefix = n - gh * gw  # class (and register) tokens
    cls = rollout[:, 0, prefix:]
    return (cls / cls.amax(1, keepdim=True)).reshape(-1, gh, gw)


def phrase_positions(module: TBPSModule, caption: str, phrase: str) -> list[int]:
    """Token positions of ``phrase`` inside the tokenised ``caption`` ([] if absent)."""
    tok = module.tokenizer
    specials = set(tok.special_ids)
    ids = tok.encode([caption])[0].tolist()
    want = [i for i in tok.encode([phrase])[0].tolist() if i not in specials]
    for s in range(len(ids) - len(want) + 1):
        if want and ids[s:s + len(want)] == want:
            return list(range(s, s + len(want)))
    return []


@torch.no_grad()
def word_regions(module: TBPSModule, image: torch.Tensor, caption: str, phrase: str
                 ) -> tuple[torch.Tensor, str]:
    """[3, H, W] image, its caption and a word or phrase of it -> ([gh, gw] map, source):
    ``TBPSModule.explain`` for that phrase alone (the cross-attention of its tokens over the
    patches when the model has a head that relates words to regions, else the similarity
    of its token features to the patches), as `tbps serve` draws it."""
    found = module.explain(image, caption, [phrase])
    return found.maps[0].to(image.device), found.source


@torch.no_grad()
def masked_word_regions(module: TBPSModule, image: torch.Tensor, caption: str, word: str
                        ) -> tuple[torch.Tensor, str]:
    """Where the reconstruction looks for a masked word: every piece of ``word`` in
    ``caption`` is replaced by the mask token, the masked caption is encoded, and the
    cross-attention of those positions over the image patches (of the head that
    reconstructs masked words: IRRA's MLM or UCFA's UAMLR) is returned as a [gh, gw] map,
    with the head's name. UAMLR's sampled image points, which join its keys in training,
    are left out: the map is the attention among the patches."""
    positions = phrase_positions(module, caption, word)
    if not positions:
        raise ValueError(f"{word!r} is not in the caption {caption!r}")
    head = next(((n, h) for n, h in module.heads.items() if hasattr(h, "cross_attention")), None)
    if head is None:
        raise ValueError("this model has no head that reconstructs masked words (MLM, UAMLR)")
    ids = module.tokenizer.encode([caption]).to(image.device)
    ids[0, positions] = module.tokenizer.mask_id
    image_tokens = module.encoder.encode_image_tokens(image[None])
    text_tokens = module.encoder.encode_text_tokens(ids)
    gh, gw = grid_size(module)
    weights = head[1].cross_attention(text_tokens, image_tokens)[0][positions, -gh * gw:]
    heat = weights.mean(0)
    heat = heat - heat.min()
    return (heat / heat.max().clamp(min=1e-8)).reshape(gh, gw), head[0]


@torch.no_grad()
def phrase_scale_attention(module: TBPSModule, image: torch.Tensor, caption: str
                           ) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """ACSA: each phrase of ``caption`` attending over the 7 image tokens (the t2i direction
    of its cross-attention). Returns (phrases, weights [P, 7], maps [P, gh, gw]): each map
    spreads a phrase's weights over the regions the tokens pool (the global token: the whole
    image; stripes: their quarter of the rows; halves: their half). With
    ``part_mode=channel_split`` the part tokens are channel groups, drawn at their nominal
    body regions (head, upper, lower, feet)."""
    from ..data.annotations import phrase_index
    from ..heads.acsa_tokens import region_maps

    head = next((h for h in module.heads.values() if hasattr(h, "phrase_token_attention")), None)
    if head is None:
        raise ValueError("this model has no ACSA head")
    tok = module.tokenizer
    batch = {"caption_ids": tok.encode([caption]).to(image.device),
             "phrases": phrase_index(tok, [caption]).tensor.long().to(image.device)}
    text_tokens = module.encoder.encode_text_tokens(batch["caption_ids"])
    weights = head.phrase_token_attention(module.encoder.encode_image_tokens(image[None]),
                                          text_tokens, batch, module.encoder)   # [P, 7]
    ids, ann = batch["caption_ids"][0], batch["phrases"][0]
    phrases = [tok.decode(ids[ann == p + 1].tolist()).strip() for p in range(len(weights))]
    maps = region_maps(weights, grid_size(module))
    return phrases, weights, maps / maps.amax((1, 2), keepdim=True).clamp(min=1e-8)

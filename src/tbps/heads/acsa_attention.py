"""ACSA's parameter-free attention and its two scores, as the official code computes them
(``func_attention_MxN``, ``compute_weiTexts``; the maths are described in ``acsa.py``), from
matrix products alone so that every caption meets every image of a batch at once."""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-8


def l2norm(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """SCAN's l2norm: x / (‖x‖ + 1e-8). ``Tensor.norm`` has a finite gradient at a zero
    vector (a padded phrase), where a hand-written sqrt would give NaN."""
    return x / (x.norm(dim=dim, keepdim=True) + EPS)


def cos_to_unit(dot: torch.Tensor, att_norm: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """The code's cos(v, l2norm(A)) from v·A, ‖A‖ and ‖v‖: l2norm divides A by ‖A‖ + 1e-8,
    cos divides by max(‖v‖‖l2norm(A)‖, 1e-8)."""
    unit = att_norm / (att_norm + EPS)
    return (dot / (att_norm + EPS)) / (norm * unit).clamp(min=EPS)


def quadratic_norm(a: torch.Tensor, equation: str, gram: torch.Tensor) -> torch.Tensor:
    """‖Σ_j a_j u_j‖ = sqrt(aᵀ G a) with G the Gram matrix of the u_j (``equation`` names
    the einsum); kept off 0 so that its gradient stays finite."""
    return torch.einsum(equation, a, gram, a).clamp(min=EPS**2).sqrt()


# The two scores from products alone. A pair's attention needs only the P × 7 cosines
# K̂_T·Q̂_I, and cos(V, l2norm(Σ a V')) needs only the P × 7 products V_T·V_I and the Gram
# matrix of the attended side: ‖Σ_j a_j u_j‖² = aᵀ G a. So no pair forms attended
# D-dimensional vectors: every caption's phrases meet every image's tokens in two matrix
# products, and what follows works on [captions, P, images, 7].
def i2t_from_products(s: torch.Tensor, sv: torch.Tensor, gram_t: torch.Tensor,
                      v_norm: torch.Tensor, mask: torch.Tensor, lam: float) -> torch.Tensor:
    """Image tokens attend to phrases: mean over the 7 tokens of cos(V_I, l2norm(A)).
    ``s`` = K̂_T·Q̂_I and ``sv`` = V_T·V_I [T, P, I, 7] (T captions, I images), ``gram_t`` =
    V_T V_Tᵀ [T, P, P], ``v_norm`` = ‖V_I‖ [T or 1, I, 7], ``mask`` [T, P] -> [T, I]."""
    s = l2norm(F.leaky_relu(s, 0.1), dim=-1) * lam                      # over the 7 queries
    s = s.masked_fill(~mask[:, :, None, None], float("-inf"))
    a = s.softmax(dim=1)                                                 # over the phrases
    att = quadratic_norm(a, "tpir,tpq,tqir->tir", gram_t)
    return cos_to_unit((a * sv).sum(1), att, v_norm).mean(-1)


def t2i_from_products(s: torch.Tensor, sv: torch.Tensor, gram_i: torch.Tensor,
                      t_norm: torch.Tensor, mask: torch.Tensor, lam: float) -> torch.Tensor:
    """Phrases attend to image tokens: mean over the real phrases of cos(V_T, l2norm(A)).
    ``s``, ``sv`` as in ``i2t_from_products``, ``gram_i`` = V_I V_Iᵀ [I, 7, 7], ``t_norm``
    = ‖V_T‖ [T, P] -> [T, I]. As in the code, the l2-normalisation over the phrases (the
    queries here) sees the padded slots, whose zero keys add nothing to it."""
    a = t2i_attention(s, lam)
    att = quadratic_norm(a, "tpir,irs,tpis->tpi", gram_i)
    cos = cos_to_unit((a * sv).sum(-1), att, t_norm[..., None])          # [T, P, I]
    keep = mask[..., None].to(cos.dtype)
    return (cos * keep).sum(1) / keep.sum(1).clamp(min=1)


def t2i_attention(s: torch.Tensor, lam: float) -> torch.Tensor:
    """Each phrase's attention over the 7 image tokens from the cosines ``s`` [T, P, I, 7]:
    l2-normalised over the phrases (the queries), softmax over the 7."""
    return (l2norm(F.leaky_relu(s, 0.1), dim=1) * lam).softmax(dim=-1)


def pair_products(text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Every phrase of every caption against every token of every image: [T, P, D] ×
    [I, 7, D] -> [T, P, I, 7], one matrix product."""
    t, p, d = text.shape
    out = text.reshape(t * p, d) @ image.reshape(-1, d).t()
    return out.view(t, p, image.shape[0], image.shape[1])


def pairwise(img_q: torch.Tensor, img_v: torch.Tensor, txt_k: torch.Tensor,
             txt_v: torch.Tensor, txt_mask: torch.Tensor, lam: float, chunk: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(i2t, t2i), each [B_img, B_txt]: the scores of every image with every caption,
    ``chunk`` images at a time (memory O(B_txt × P × chunk × 7))."""
    k_hat, t_norm = l2norm(txt_k), txt_v.norm(dim=-1)
    gram_t = txt_v @ txt_v.transpose(-1, -2)
    i2t, t2i = [], []
    for start in range(0, img_q.shape[0], chunk):
        q, v = img_q[start:start + chunk], img_v[start:start + chunk]
        s, sv = pair_products(k_hat, l2norm(q)), pair_products(txt_v, v)
        i2t.append(i2t_from_products(s, sv, gram_t, v.norm(dim=-1)[None], txt_mask, lam))
        t2i.append(t2i_from_products(s, sv, v @ v.transpose(-1, -2), t_norm, txt_mask, lam))
    return torch.cat(i2t, 1).t(), torch.cat(t2i, 1).t()

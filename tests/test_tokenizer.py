import torch

from tbps.data.tokenizer import CaptionTokenizer

CAPS = ["A woman in a red coat and black jeans.", "The man wears a blue shirt with white stripes.",
        "She carries a yellow handbag and wears glasses."] * 20


def test_specials_padding_and_truncation_keep_eos_last():
    tok = CaptionTokenizer.train(CAPS, vocab_size=200, context_length=8)
    ids = tok.encode(["a woman in a red coat and black jeans and a blue shirt", "a man"])
    assert ids.shape == (2, 8) and ids.dtype == torch.long
    assert ids[0, 0] == tok.sos_id and ids[0, -1] == tok.eos_id  # truncated, [EOS] kept last
    assert ids[1, 0] == tok.sos_id and (ids[1] == tok.eos_id).sum() == 1 and ids[1, -1] == tok.pad_id
    assert tok.pad_id == 0 and tok.mask_id not in ids


def test_round_trip_and_case():
    tok = CaptionTokenizer.train(CAPS, vocab_size=200, context_length=16)
    again = CaptionTokenizer.from_json(tok.to_json(), 16)
    assert torch.equal(tok.encode(CAPS[:3]), again.encode(CAPS[:3]))
    assert torch.equal(tok.encode(["A RED COAT"]), tok.encode(["a red coat"]))


def test_decode_restores_words():
    tok = CaptionTokenizer.train(CAPS, vocab_size=200, context_length=32)
    assert tok.decode(tok.encode(["a woman in a red coat"])[0].tolist()) == "a woman in a red coat"

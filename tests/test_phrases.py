"""The phrase / attribute-word chunker on captions written in the styles of CUHK-PEDES,
ICFG-PEDES and RSTPReid (run-on, misspelt, British and American, he/she is wearing …,
lists with commas and "and"), and against SynthPedes' recorded attribute words."""

import json

import pytest

from tbps.data.phrases import PERSON, attribute_words, extract_phrases

CASES = [
    # CUHK-PEDES: short, lists with commas
    ("A young woman in a red down jacket, black jeans, carrying a white handbag.",
     ["A young woman", "a red down jacket", "black jeans", "a white handbag"]),
    # CUHK-PEDES: misspelt and run-on
    ("The man is wearing a grey t shirt and blue jeans with white sneackers he has short "
     "black hair and carries a black backpack",
     ["a grey t shirt", "blue jeans", "white sneackers", "short black hair", "a black backpack"]),
    # ICFG-PEDES: long, "she is wearing", British spellings
    ("She is wearing a navy blue colour jumper and light grey trousers. She has long brown "
     "hair tied in a ponytail and is carrying a black leather shoulder bag over her shoulder.",
     ["a navy blue colour jumper", "light grey trousers", "long brown hair", "a ponytail",
      "a black leather shoulder bag"]),
    # RSTPReid: coordinated colours, pair of shoes, build before the person noun
    ("A slim woman with long hair wears a black and white striped shirt, a pair of black "
     "high heels and gray pants.",
     ["A slim woman", "long hair", "a black and white striped shirt",
      "a pair of black high heels", "gray pants"]),
    # predicate adjectives and American spelling
    ("The guy's hair is short black and he has on a tshirt colored orange with khaki shorts",
     ["hair is short black", "a tshirt colored orange", "khaki shorts"]),
]


@pytest.mark.parametrize("caption,expected", CASES)
def test_phrases_of_real_style_captions(caption, expected):
    result = extract_phrases(caption)
    assert not result.fallback
    assert [p.text for p in result.phrases] == expected
    for p in result.phrases:  # spans point at the caption's own characters
        assert caption[p.start:p.end] == p.text


@pytest.mark.parametrize("caption,_", CASES)
def test_person_nouns_and_function_words_are_never_attributes(caption, _):
    words = attribute_words(caption)
    assert words
    assert not set(words) & (PERSON | {"a", "an", "the", "and", "with", "is", "of", "pair"})


def test_attribute_words_of_one_caption():
    caption = "A heavy man in a Grey plaid coat, dark blue jeans and brown boots, no bag."
    assert attribute_words(caption) == ["heavy", "grey", "plaid", "coat", "dark", "blue",
                                        "jeans", "brown", "boots", "bag"]


def test_caption_without_phrase_is_one_phrase_and_flagged():
    result = extract_phrases("  This person is walking quickly.  ")
    assert result.fallback and len(result.phrases) == 1
    assert result.phrases[0].text == "This person is walking quickly."
    assert result.phrases[0].attributes == ()


def test_at_most_num_phrases():
    caption = "a red cap, a blue coat, black jeans, white shoes, a green bag, a yellow scarf"
    assert len(extract_phrases(caption, max_phrases=4).phrases) == 4
    assert len(extract_phrases(caption).phrases) == 6


def test_synthpedes_attribute_words_are_found(tiny_synth):
    """SynthPedes records each caption's attribute words; the chunker finds nearly all of
    them (person nouns excluded: SynthPedes counts gender words, masking never does)."""
    records = json.loads((tiny_synth / "CUHK-PEDES" / "reid_raw.json").read_text())
    found = total = fallback = 0
    for record in records:
        for caption, truth in zip(record["captions"], record["attribute_words"]):
            predicted = set(attribute_words(caption))
            truth = [w.lower() for w in truth if w.lower() not in PERSON]
            # SynthPedes splits "t shirt" into two words; the chunker keeps it one
            found += sum(w in predicted or any(w in p.split() for p in predicted) for w in truth)
            total += len(truth)
            fallback += extract_phrases(caption).fallback
    recall = found / total
    print(f"\nSynthPedes attribute-word recall {recall:.3f} over {total} words")
    assert recall > 0.9 and fallback == 0


@pytest.mark.parametrize("kind", ["clip", "trained"])
def test_phrases_and_words_map_to_whole_token_spans(kind):
    from tbps.data.tokenizer import CaptionTokenizer

    captions = [c for c, _ in CASES] + ["She carries a fuchsiaandteal rucksack &amp; a cap"]
    tok = (CaptionTokenizer.clip() if kind == "clip"
           else CaptionTokenizer.train([c for c, _ in CASES] * 5, 300, 64))
    split_words = 0
    for caption in captions:
        text = tok.prepare(caption)
        phrases = extract_phrases(text).phrases
        ids = tok.encode([text])[0].tolist()
        assert tok.decode(ids).replace(" ", "")  # decodes
        words = [span for p in phrases for span in p.attributes]
        for (s, e), span in zip([(p.start, p.end) for p in phrases] + words,
                                tok.token_spans(text, [(p.start, p.end) for p in phrases] + words)):
            if span is None:  # cut off by truncation
                assert len(ids) == tok.context_length and ids[-1] in (tok.eos_id, tok.pad_id)
                continue
            offsets = tok.tok.encode(text).offsets[span[0]:span[1]]
            # the pieces cover exactly the span: the first starts it, the last ends it
            assert offsets[0][0] == s and offsets[-1][1] == e, (text[s:e], offsets)
            split_words += span[1] - span[0] > 1
    assert split_words > 0  # some words are several pieces, and they are all covered


def test_a_span_beyond_the_context_is_none():
    from tbps.data.tokenizer import CaptionTokenizer

    tok = CaptionTokenizer.clip(context_length=8)
    text = tok.prepare("a man in a red coat with blue jeans and white shoes")
    phrases = extract_phrases(text).phrases
    spans = tok.token_spans(text, [(p.start, p.end) for p in phrases])
    assert spans[0] is not None and spans[-1] is None

import json
import unicodedata

import pytest

from captioning.data.vocabulary import END, PAD, START, UNK, Vocabulary, clean_caption

SEED_RAW = "A child in a pink dress is climbing up a set of stairs in an entry way ."
SEED_CLEAN = "startseq child in pink dress is climbing up set of stairs in an entry way endseq"


def test_seed_example_is_cleaned_exactly_like_the_seed_project():
    assert clean_caption(SEED_RAW) == SEED_CLEAN


def test_keep_one_letter_words_keeps_the_article_a():
    cleaned = clean_caption(SEED_RAW, keep_one_letter_words=True)
    assert cleaned == (
        "startseq a child in a pink dress is climbing up a set of stairs in an entry way endseq"
    )


def test_punctuation_is_stripped_from_inside_and_around_tokens():
    assert clean_caption('The dog\'s "ball", (red)!') == "startseq the dogs ball red endseq"


def test_tokens_with_digits_are_dropped():
    assert clean_caption("Two dogs play with 3 balls on a 2nd-floor deck") == (
        "startseq two dogs play with balls on deck endseq"
    )


def test_whitespace_of_any_kind_collapses_to_single_spaces():
    assert clean_caption("  Dogs\t run \n fast  ") == "startseq dogs run fast endseq"


def test_caption_with_no_surviving_words_cleans_to_empty_string():
    assert clean_caption(" . , 42 a ") == ""
    assert clean_caption("") == ""
    assert clean_caption("a", keep_one_letter_words=True) == "startseq a endseq"


def test_reserved_tokens_have_fixed_ids():
    vocab = Vocabulary.build([SEED_CLEAN])
    assert vocab.tokens[:4] == [PAD, UNK, START, END]
    assert (vocab.pad_id, vocab.unk_id, vocab.start_id, vocab.end_id) == (0, 1, 2, 3)


def test_min_count_two_keeps_only_words_seen_more_than_once():
    captions = ["startseq dog runs endseq", "startseq dog sits endseq", "startseq cat runs endseq"]
    vocab = Vocabulary.build(captions, min_count=2)
    assert vocab.tokens == [PAD, UNK, START, END, "dog", "runs"]
    assert len(vocab) == 6
    assert "cat" not in vocab


def test_min_count_one_keeps_every_word_ordered_by_count_then_alphabet():
    captions = ["startseq b a c c endseq", "startseq c b endseq"]
    vocab = Vocabulary.build(captions, min_count=1)
    assert vocab.tokens[4:] == ["c", "b", "a"]


def test_build_is_deterministic_regardless_of_caption_order():
    captions = ["startseq z y endseq", "startseq y x endseq", "startseq x z endseq"]
    assert Vocabulary.build(captions, 1) == Vocabulary.build(list(reversed(captions)), 1)


def test_min_count_below_one_is_rejected():
    with pytest.raises(ValueError, match="min_count"):
        Vocabulary.build([], min_count=0)


def test_encode_decode_round_trip_drops_start_end_and_padding():
    vocab = Vocabulary.build([SEED_CLEAN], min_count=1)
    ids = vocab.encode(SEED_CLEAN)
    assert ids[0] == vocab.start_id and ids[-1] == vocab.end_id
    padded = ids + [vocab.pad_id] * 3
    assert vocab.decode(padded) == SEED_CLEAN.removeprefix("startseq ").removesuffix(" endseq")


def test_decode_stops_at_first_end_id():
    vocab = Vocabulary.build(["startseq dog runs endseq"], min_count=1)
    ids = vocab.encode("startseq dog endseq runs runs")
    assert vocab.decode(ids) == "dog"


def test_unknown_words_encode_to_unk_and_decode_visibly():
    vocab = Vocabulary.build(["startseq dog runs endseq"], min_count=1)
    ids = vocab.encode("startseq zebra runs endseq")
    assert ids[1] == vocab.unk_id
    assert vocab.decode(ids) == f"{UNK} runs"


def test_decode_rejects_ids_outside_the_vocabulary():
    vocab = Vocabulary.build([], min_count=1)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        vocab.decode([99])


def test_save_and_load_round_trip_as_json(tmp_path):
    vocab = Vocabulary.build(["startseq dog runs endseq", "startseq dog sits endseq"], 1)
    path = tmp_path / "vocab.json"
    vocab.save(path)
    payload = json.loads(path.read_text(encoding="utf-8"))
    assert payload["format"] == "captioning.vocabulary/1"
    assert payload["tokens"] == vocab.tokens
    assert payload["min_count"] == 1
    loaded = Vocabulary.load(path)
    assert loaded == vocab
    assert loaded.min_count == 1


def test_loading_a_non_json_file_names_the_file(tmp_path):
    path = tmp_path / "vocab.pkl"
    path.write_bytes(b"\x80\x04\x95not json")
    with pytest.raises(ValueError, match="vocab.pkl"):
        Vocabulary.load(path)


def test_loading_json_of_another_format_names_the_file(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"tokens": ["a"]}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"other\.json.*captioning\.vocabulary/1"):
        Vocabulary.load(path)


def test_loading_a_vocabulary_without_reserved_tokens_is_rejected(tmp_path):
    path = tmp_path / "bad.json"
    payload = {"format": "captioning.vocabulary/1", "tokens": ["dog", "cat"], "min_count": 2}
    path.write_text(json.dumps(payload), encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.json.*<pad>"):
        Vocabulary.load(path)


# --- captions in any script ------------------------------------------------------------------

HINDI_RAW = "एक लड़का पार्क में खेल रहा है"  # "a boy is playing in the park"


def test_words_whose_letters_carry_combining_marks_are_kept():
    # लड़का, पार्क, खेल, रहा, में, है: letters with vowel signs, a nukta, a virama (category M*).
    assert clean_caption(HINDI_RAW) == f"startseq {HINDI_RAW} endseq"


def test_the_one_letter_rule_counts_characters_marks_included():
    # में (म + two marks) and है (ह + a mark) are words of three and two characters; "à" and
    # "é" are one character each in NFC, dropped like English "a".
    assert clean_caption("में है") == "startseq में है endseq"
    assert clean_caption("où à é", keep_one_letter_words=False) == "startseq où endseq"
    assert clean_caption(unicodedata.normalize("NFD", "où à é")) == "startseq où endseq"


def test_decomposed_and_composed_spellings_clean_to_the_same_composed_word():
    decomposed = unicodedata.normalize("NFD", "Un carré, un côté.")
    assert decomposed != unicodedata.normalize("NFC", decomposed)
    cleaned = clean_caption(decomposed)
    assert cleaned == "startseq un carré un côté endseq"
    assert cleaned == unicodedata.normalize("NFC", cleaned)


def test_punctuation_and_symbols_of_any_script_are_stripped_like_ascii_ones():
    assert clean_caption("«Le chien» — court… “vite”!") == "startseq le chien court vite endseq"
    assert clean_caption("लड़का खेल रहा है।") == "startseq लड़का खेल रहा है endseq"


def test_tokens_with_digits_of_any_script_are_dropped():
    assert clean_caption("तीन ४२ कुत्ते ٣ قطط") == "startseq तीन कुत्ते قطط endseq"


def test_invisible_joiners_stay_inside_a_word_and_other_format_marks_go():
    # Persian writes می‌رود with a zero-width non-joiner; a soft hyphen is only a line-break hint.
    assert clean_caption("او می\u200cرود") == "startseq او می\u200cرود endseq"
    assert clean_caption("stair\u00adcase") == "startseq staircase endseq"


def test_loading_a_vocabulary_nested_too_deeply_names_the_file(tmp_path):
    path = tmp_path / "vocab.json"
    path.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab\.json: JSON nested too deeply"):
        Vocabulary.load(path)

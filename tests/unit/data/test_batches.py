"""CaptionBatches: whole captions for teacher forcing, bucketed by length, seeded shuffling."""

import numpy as np
import pytest
from PIL import Image

from captioning.config.schema import TrainConfig
from captioning.data.batches import CaptionBatches, encode_captions
from captioning.data.dataset import load_dataset
from captioning.data.vocabulary import Vocabulary

WORDS = ["red", "blue", "green", "circle", "square", "star", "on", "dark", "light", "background",
         "small", "large"]
BUCKET = 4


def make_captions(count: int = 37, seed: int = 0) -> list[str]:
    """Cleaned captions of 1..12 words (3..14 tokens with startseq/endseq)."""
    rng = np.random.default_rng(seed)
    captions = ["startseq red circle endseq"]
    while len(captions) < count:
        words = rng.choice(WORDS, size=int(rng.integers(1, 13)))
        captions.append(" ".join(["startseq", *words, "endseq"]))
    return captions


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary.build(make_captions(), min_count=1)


@pytest.fixture(scope="module")
def sequences(vocab) -> list[np.ndarray]:
    return encode_captions(make_captions(), vocab, max_length=40)


def make_batches(sequences, batch_size=5, shuffle=True, seed=0, bucket=BUCKET) -> CaptionBatches:
    # Caption i gets its own image whose single feature is i, so every sample is traceable.
    features = np.arange(len(sequences), dtype="float64").reshape(-1, 1)
    rows = np.arange(len(sequences))
    return CaptionBatches(features, rows, sequences, batch_size, shuffle=shuffle, seed=seed,
                          bucket=bucket)


def epoch(batches: CaptionBatches) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(caption ids, tokens, targets) of every batch in order."""
    out = []
    for index in range(len(batches)):
        inputs, targets = batches[index]
        ids = inputs["image"][:, 0].astype(int)
        out.append((ids, inputs["tokens"], targets))
    return out


def rounded(length: int, bucket: int = BUCKET) -> int:
    return -(-length // bucket) * bucket


@pytest.mark.parametrize("shuffle", [True, False])
def test_every_caption_appears_exactly_once_per_epoch(sequences, shuffle):
    batches = make_batches(sequences, shuffle=shuffle)
    for _ in range(3):
        ids = np.concatenate([ids for ids, _, _ in epoch(batches)])
        assert sorted(ids.tolist()) == list(range(len(sequences)))
        assert len(batches) == -(-len(sequences) // 5)
        batches.on_epoch_end()


def test_inputs_are_the_caption_and_targets_are_it_shifted_by_one(sequences, vocab):
    batches = make_batches(sequences)
    for ids, tokens, targets in epoch(batches):
        assert tokens.dtype == np.int32 and targets.dtype == np.int32
        assert tokens.shape == targets.shape
        for i, caption in enumerate(ids):
            sequence = sequences[caption]
            n = len(sequence) - 1
            np.testing.assert_array_equal(tokens[i, :n], sequence[:-1])
            np.testing.assert_array_equal(targets[i, :n], sequence[1:])
            np.testing.assert_array_equal(tokens[i, 1:n], targets[i, :n - 1])
            assert tokens[i, 0] == vocab.start_id
            assert targets[i, n - 1] == vocab.end_id
            assert not np.any(tokens[i, n:]) and not np.any(targets[i, n:])
            assert vocab.pad_id == 0


def test_image_features_are_float32_rows_of_each_caption(vocab):
    sequences = encode_captions(["startseq red circle endseq"] * 4, vocab, 40)
    features = np.array([[1.0, 2.0], [3.0, 4.0]], dtype="float64")
    rows = np.array([1, 0, 1, 1])
    batches = CaptionBatches(features, rows, sequences, 4, shuffle=False)
    inputs, _ = batches[0]
    assert inputs["image"].dtype == np.float32
    np.testing.assert_array_equal(inputs["image"], features[[1, 0, 1, 1]])


def test_batch_width_is_its_longest_caption_rounded_up_to_the_bucket(sequences):
    batches = make_batches(sequences)
    widths = []
    for ids, tokens, _ in epoch(batches):
        longest = max(len(sequences[i]) - 1 for i in ids)
        assert tokens.shape[1] == rounded(longest)
        assert tokens.shape[1] % BUCKET == 0
        widths.append(tokens.shape[1])
    global_width = rounded(max(len(s) - 1 for s in sequences))
    assert max(widths) == global_width
    assert min(widths) < global_width  # short captions are not padded to the global maximum


def test_captions_are_grouped_by_length_so_padding_stays_small(sequences):
    batches = make_batches(sequences, batch_size=4)
    padded = sum(tokens.size for _, tokens, _ in epoch(batches))
    everything_at_global_width = len(sequences) * rounded(max(len(s) - 1 for s in sequences))
    assert padded < 0.8 * everything_at_global_width
    assert batches.tokens == sum(len(s) - 1 for s in sequences)


@pytest.mark.parametrize(("shuffle", "seed"), [(False, 0), (True, 0), (True, 1), (True, 7)])
def test_first_two_batches_have_different_widths(sequences, shuffle, seed):
    batches = make_batches(sequences, shuffle=shuffle, seed=seed)
    for _ in range(4):
        first, second = batches[0][1].shape[1], batches[1][1].shape[1]
        assert first != second
        batches.on_epoch_end()


def test_unshuffled_batches_start_with_the_longest(sequences):
    batches = make_batches(sequences, shuffle=False)
    global_width = rounded(max(len(s) - 1 for s in sequences))
    assert batches[0][1].shape[1] == global_width


def test_captions_of_one_width_still_batch(vocab):
    sequences = encode_captions(["startseq red circle endseq"] * 9, vocab, 40)
    batches = make_batches(sequences, batch_size=4)
    widths = {tokens.shape[1] for _, tokens, _ in epoch(batches)}
    assert widths == {BUCKET}
    assert len(batches) == 3


def order(batches: CaptionBatches) -> list[list[int]]:
    return [ids.tolist() for ids, _, _ in epoch(batches)]


def test_shuffling_is_deterministic_for_a_seed(sequences):
    first, again = make_batches(sequences, seed=3), make_batches(sequences, seed=3)
    for _ in range(3):
        assert order(first) == order(again)
        first.on_epoch_end()
        again.on_epoch_end()
    assert order(make_batches(sequences, seed=3)) != order(make_batches(sequences, seed=4))


def test_shuffled_order_changes_between_epochs(sequences):
    batches = make_batches(sequences, seed=0)
    seen = [order(batches)]
    for _ in range(3):
        batches.on_epoch_end()
        seen.append(order(batches))
    assert all(seen[i] != seen[i + 1] for i in range(len(seen) - 1))


def test_unshuffled_order_is_the_same_every_epoch(sequences):
    batches = make_batches(sequences, shuffle=False)
    before = order(batches)
    batches.on_epoch_end()
    assert order(batches) == before


def test_no_captions_is_an_error():
    with pytest.raises(ValueError, match="no captions"):
        CaptionBatches(np.zeros((1, 2)), np.zeros(0, int), [], 4, shuffle=True)


def test_encode_captions_cuts_long_captions_keeping_endseq_last(vocab):
    long_caption = "startseq " + " ".join(WORDS) + " endseq"  # 14 tokens
    short_caption = "startseq red circle endseq"
    long_ids, short_ids, exact_ids = encode_captions(
        [long_caption, short_caption, "startseq red blue green endseq"], vocab, max_length=5
    )
    assert len(long_ids) == 5
    assert long_ids[-1] == vocab.end_id
    assert long_ids[:4].tolist() == vocab.encode(long_caption)[:4]
    assert short_ids.tolist() == vocab.encode(short_caption)
    assert exact_ids.tolist() == vocab.encode("startseq red blue green endseq")
    assert long_ids.dtype == np.int32


def test_encode_captions_maps_unknown_words_to_unk(vocab):
    (ids,) = encode_captions(["startseq purple circle endseq"], vocab, max_length=40)
    assert ids.tolist() == [vocab.start_id, vocab.unk_id, vocab.encode("circle")[0], vocab.end_id]


def test_a_500_word_caption_is_loaded_then_cut_to_max_caption_length_keeping_endseq(tmp_path):
    (tmp_path / "Images").mkdir()
    for name in ("long.jpg", "short.jpg"):
        Image.new("RGB", (8, 8)).save(tmp_path / "Images" / name)
    essay = " ".join(WORDS[i % len(WORDS)] for i in range(500))
    (tmp_path / "captions.txt").write_text(
        f"image,caption\nlong.jpg,{essay}\nshort.jpg,A red circle .\n", encoding="utf-8")
    dataset = load_dataset(tmp_path)
    assert dataset.summary()["longest_caption"] == 500  # nothing dropped at load time
    captions = [c for name in dataset.images() for c in dataset.captions[name]]
    vocab = Vocabulary.build(captions, min_count=1)
    max_length = TrainConfig().max_caption_length  # what train.py cuts every caption to
    long_ids, short_ids = encode_captions(captions, vocab, max_length)
    assert len(long_ids) == max_length
    assert long_ids[0] == vocab.start_id and long_ids[-1] == vocab.end_id
    assert len(short_ids) == 4
    batches = CaptionBatches(np.zeros((2, 3)), np.array([0, 1]), [long_ids, short_ids],
                             batch_size=2, shuffle=False)
    inputs, targets = batches[0]
    assert inputs["tokens"].shape == targets.shape == (2, rounded(max_length - 1))
    long_row = int(np.argmax((targets != 0).sum(axis=1)))
    assert targets[long_row, max_length - 2] == vocab.end_id


@pytest.mark.parametrize("grid", [False, True])
def test_the_tf_data_pipeline_gives_the_same_batches_in_the_same_order(tmp_path, grid):
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 15, size=90)
    sequences = [np.r_[2, rng.integers(4, 30, size=n - 2), 3].astype("int32") for n in lengths]
    rows = np.arange(90) // 5
    if grid:  # memory-mapped feature maps, as the cache holds them
        maps = np.lib.format.open_memmap(tmp_path / "maps.npy", mode="w+", dtype="float16",
                                         shape=(18, 4, 6))
        maps[:] = rng.normal(size=maps.shape)
        maps.flush()
        features = np.load(tmp_path / "maps.npy", mmap_mode="r")
    else:
        features = rng.normal(size=(18, 6)).astype("float32")
    expected = CaptionBatches(features, rows, sequences, 8, shuffle=True, seed=3)
    piped = CaptionBatches(features, rows, sequences, 8, shuffle=True, seed=3).tf_dataset()
    assert int(piped.cardinality()) == len(expected)  # Keras knows the steps of an epoch
    for _ in range(2):  # two epochs: the second is shuffled anew, as Keras would ask
        got = [(x, y) for x, y in piped.as_numpy_iterator()]
        assert len(got) == len(expected)
        for i, (x, y) in enumerate(got):
            want_x, want_y = expected[i]
            np.testing.assert_array_equal(x["tokens"], want_x["tokens"])
            np.testing.assert_array_equal(y, want_y)
            np.testing.assert_array_equal(x["image"], want_x["image"])
        expected.on_epoch_end()

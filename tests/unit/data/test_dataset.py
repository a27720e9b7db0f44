import json
import logging
import os
import struct
import unicodedata
import zlib
from pathlib import Path

import pytest

from captioning.data.dataset import Dataset, Skipped, _seeded_split, load_dataset
from captioning.errors import DatasetError

BOGUS_ID = "2258277193_586949ec62.jpg.1"
SEED_RAW = "A child in a pink dress is climbing up a set of stairs in an entry way ."
SEED_CLEAN = "startseq child in pink dress is climbing up set of stairs in an entry way endseq"


def tiny_png() -> bytes:
    """A valid 1x1 grey PNG (never decoded by the loader, but realistic on disk)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00\x80")
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def make_images(folder: Path, names) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(tiny_png())


def image_names(n: int) -> list[str]:
    return [f"{1000000000 + i * 7919}_{i:010x}.jpg" for i in range(n)]


def write_kaggle(root: Path, names, extra_lines=()) -> None:
    lines = ["image,caption"]
    for name in names:
        lines += [f"{name},A dog runs on the grass .", f"{name},A brown dog is running ."]
    lines += list(extra_lines)
    (root / "captions.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def token_lines(names) -> list[str]:
    return [f"{name}#{i}\tA dog number {i} runs on the grass ." for name in names for i in range(5)]


# --- Kaggle layout ---------------------------------------------------------------------------


def test_kaggle_layout_reads_csv_captions_with_commas_and_quotes(tmp_path):
    names = image_names(5)
    make_images(tmp_path / "Images", names + ["1000268201_693b08cb0e.jpg"])
    write_kaggle(
        tmp_path,
        names,
        extra_lines=[
            f"1000268201_693b08cb0e.jpg,{SEED_RAW}",
            '1000268201_693b08cb0e.jpg,"A girl, in pink, climbs the stairs ."',
            '1000268201_693b08cb0e.jpg,"The girl says ""hello"" to her dog ."',
        ],
    )
    ds = load_dataset(tmp_path)
    assert ds.layout == "kaggle"
    assert ds.image_dir == tmp_path / "Images"
    assert ds.captions["1000268201_693b08cb0e.jpg"] == [
        SEED_CLEAN,
        "startseq girl in pink climbs the stairs endseq",
        "startseq the girl says hello to her dog endseq",
    ]
    assert ds.captions[names[0]] == [
        "startseq dog runs on the grass endseq",
        "startseq brown dog is running endseq",
    ]
    assert ds.skipped == ()


def test_kaggle_caption_with_unquoted_comma_keeps_the_whole_caption(tmp_path):
    make_images(tmp_path / "Images", ["a.jpg"])
    write_kaggle(tmp_path, [], extra_lines=["a.jpg,A dog, a cat and a bird ."])
    ds = load_dataset(tmp_path, "kaggle")
    assert ds.captions == {"a.jpg": ["startseq dog cat and bird endseq"]}


def test_caption_whose_image_is_missing_is_skipped_and_counted(tmp_path, caplog):
    names = image_names(4)
    make_images(tmp_path / "Images", names[:3])
    write_kaggle(tmp_path, names)
    with caplog.at_level(logging.WARNING, logger="captioning.data.dataset"):
        ds = load_dataset(tmp_path)
    assert names[3] not in ds.captions
    assert ds.skipped == (Skipped(names[3], "image file missing", 2),)
    assert names[3] in caplog.text and "image file missing" in caplog.text



def test_captions_in_any_script_keep_their_words(tmp_path):
    make_images(tmp_path / "Images", ["a.jpg", "b.jpg"])
    nfd = unicodedata.normalize("NFD", "Un carré à côté .")
    write_kaggle(tmp_path, [], extra_lines=["a.jpg,एक लड़का पार्क में खेल रहा है", f"b.jpg,{nfd}"])
    ds = load_dataset(tmp_path)
    assert ds.captions == {"a.jpg": ["startseq एक लड़का पार्क में खेल रहा है endseq"],
                           "b.jpg": ["startseq un carré côté endseq"]}
    assert ds.skipped == ()


def test_image_that_is_a_symlink_loop_is_skipped_and_reported(tmp_path, caplog):
    make_images(tmp_path / "Images", ["a.jpg"])
    (tmp_path / "Images" / "loop.jpg").symlink_to("loop.jpg")
    write_kaggle(tmp_path, ["a.jpg", "loop.jpg"])
    with caplog.at_level(logging.WARNING, logger="captioning.data.dataset"):
        ds = load_dataset(tmp_path)
    assert list(ds.captions) == ["a.jpg"] and len(ds.captions["a.jpg"]) == 2
    reason = "image file unreadable (Too many levels of symbolic links)"
    assert ds.skipped == (Skipped("loop.jpg", reason, 2),)
    assert "loop.jpg" in caplog.text and reason in caplog.text


@pytest.mark.skipif(os.geteuid() == 0, reason="root lists any folder")
def test_an_image_folder_that_cannot_be_listed_is_an_error_naming_it(tmp_path):
    make_images(tmp_path / "Images", ["a.jpg"])
    write_kaggle(tmp_path, ["a.jpg"])
    (tmp_path / "Images").chmod(0)
    try:
        with pytest.raises(DatasetError, match=r"Images: cannot list its files \(Permission"):
            load_dataset(tmp_path)
    finally:
        (tmp_path / "Images").chmod(0o755)

def test_csv_missing_caption_column_names_the_file_and_columns_found(tmp_path):
    make_images(tmp_path / "Images", ["a.jpg"])
    (tmp_path / "captions.txt").write_text("image,text\na.jpg,A dog .\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"captions\.txt.*'image', 'text'"):
        load_dataset(tmp_path)


def test_csv_row_with_too_few_fields_names_the_line(tmp_path):
    make_images(tmp_path / "Images", ["a.jpg"])
    (tmp_path / "captions.txt").write_text("image,caption\na.jpg,A dog .\nb.jpg\n", "utf-8")
    with pytest.raises(DatasetError, match=r"captions\.txt line 3"):
        load_dataset(tmp_path)


def test_empty_caption_after_cleaning_is_dropped_and_reported(tmp_path):
    make_images(tmp_path / "Images", ["a.jpg", "b.jpg"])
    write_kaggle(tmp_path, ["a.jpg"], extra_lines=["a.jpg, . ", "b.jpg,42 !", "b.jpg,a"])
    ds = load_dataset(tmp_path)
    assert len(ds.captions["a.jpg"]) == 2
    assert "b.jpg" not in ds.captions
    assert set(ds.skipped) == {
        Skipped("a.jpg", "empty caption", 1),
        Skipped("b.jpg", "empty caption", 2),
    }


def test_keep_one_letter_words_reaches_the_cleaner(tmp_path):
    make_images(tmp_path / "Images", ["a.jpg"])
    write_kaggle(tmp_path, [], extra_lines=["a.jpg,A dog ."])
    ds = load_dataset(tmp_path, keep_one_letter_words=True)
    assert ds.captions["a.jpg"] == ["startseq a dog endseq"]


def test_non_utf8_caption_file_names_file_and_line(tmp_path):
    make_images(tmp_path / "Images", ["a.jpg"])
    data = b"image,caption\na.jpg,A dog .\na.jpg,A caf\xe9 sign .\n"
    (tmp_path / "captions.txt").write_bytes(data)
    with pytest.raises(DatasetError, match=r"captions\.txt line 3: not valid UTF-8"):
        load_dataset(tmp_path)


# --- original token layout -------------------------------------------------------------------


def test_bogus_flickr_id_is_skipped_with_warning(tmp_path, caplog):
    names = image_names(6)
    make_images(tmp_path / "Flicker8k_Dataset", names)
    lines = token_lines(names[:3]) + token_lines([BOGUS_ID]) + token_lines(names[3:])
    (tmp_path / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="captioning.data.dataset"):
        ds = load_dataset(tmp_path)
    assert ds.layout == "token"
    assert ds.image_dir == tmp_path / "Flicker8k_Dataset"
    assert sorted(ds.captions) == sorted(names)
    assert all(len(caps) == 5 for caps in ds.captions.values())
    assert ds.skipped == (Skipped(BOGUS_ID, "image file missing", 5),)
    assert BOGUS_ID in caplog.text


def test_token_file_seed_caption_is_cleaned(tmp_path):
    make_images(tmp_path / "Flickr8k_Dataset", ["1000268201_693b08cb0e.jpg"])
    line = f"1000268201_693b08cb0e.jpg#0\t{SEED_RAW}\r\n"
    (tmp_path / "Flickr8k.token.txt").write_text(line, encoding="utf-8", newline="")
    ds = load_dataset(tmp_path, "token")
    assert ds.captions == {"1000268201_693b08cb0e.jpg": [SEED_CLEAN]}


def test_official_split_lists_are_honoured_and_dev_becomes_val(tmp_path, caplog):
    names = image_names(8)
    text_dir = tmp_path / "Flickr8k_text"
    text_dir.mkdir()
    make_images(tmp_path / "Flicker8k_Dataset", names)
    lines = token_lines(names) + token_lines([BOGUS_ID])
    (text_dir / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (text_dir / "Flickr8k.lemma.token.txt").write_text("nonsense without tabs\n", encoding="utf-8")
    (text_dir / "Flickr_8k.trainImages.txt").write_text("\n".join(names[:4]) + "\n", "utf-8")
    (text_dir / "Flickr_8k.devImages.txt").write_text(f"{names[4]}\n", "utf-8")
    (text_dir / "Flickr_8k.testImages.txt").write_text(
        f"{names[5]}\nnot_in_captions.jpg\n", "utf-8"
    )
    with caplog.at_level(logging.WARNING, logger="captioning.data.dataset"):
        ds = load_dataset(tmp_path, split_seed=123)
    assert ds.splits == {"train": sorted(names[:4]), "val": [names[4]], "test": [names[5]]}
    assert sorted(ds.captions) == sorted(names[:6])
    assert set(ds.skipped) == {
        Skipped(BOGUS_ID, "image file missing", 5),
        Skipped("not_in_captions.jpg", "in test list but has no captions", 0),
        Skipped(names[6], "in no split list", 5),
        Skipped(names[7], "in no split list", 5),
    }
    assert "in no split list" in caplog.text


def test_listed_image_missing_on_disk_is_reported_once(tmp_path):
    names = image_names(3)
    make_images(tmp_path / "Flicker8k_Dataset", names[:2])
    (tmp_path / "Flickr8k.token.txt").write_text("\n".join(token_lines(names)), "utf-8")
    (tmp_path / "Flickr_8k.trainImages.txt").write_text("\n".join(names), "utf-8")
    ds = load_dataset(tmp_path)
    assert ds.splits["train"] == sorted(names[:2])
    assert ds.skipped == (Skipped(names[2], "image file missing", 5),)


def test_split_list_naming_only_images_that_do_not_exist_is_an_error_naming_it(tmp_path):
    names = image_names(4)
    make_images(tmp_path / "Flicker8k_Dataset", names)
    (tmp_path / "Flickr8k.token.txt").write_text("\n".join(token_lines(names)), "utf-8")
    (tmp_path / "Flickr_8k.trainImages.txt").write_text("other_1.jpg\nother_2.jpg\n", "utf-8")
    (tmp_path / "Flickr_8k.testImages.txt").write_text("\n".join(names), "utf-8")
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(tmp_path)
    assert str(excinfo.value).startswith(
        f"{tmp_path / 'Flickr_8k.trainImages.txt'}: none of its 2 images can be used "
        "(2 not in Flickr8k.token.txt, 0 without an image file or a non-empty caption), "
        "e.g. other_1.jpg; "
    )


def test_image_in_two_split_lists_is_an_error(tmp_path):
    make_images(tmp_path / "Flicker8k_Dataset", ["a.jpg"])
    (tmp_path / "Flickr8k.token.txt").write_text("a.jpg#0\tA dog .\n", "utf-8")
    (tmp_path / "Flickr_8k.trainImages.txt").write_text("a.jpg\n", "utf-8")
    (tmp_path / "Flickr_8k.testImages.txt").write_text("a.jpg\n", "utf-8")
    with pytest.raises(DatasetError, match=r"a\.jpg is also listed in .*trainImages"):
        load_dataset(tmp_path)


def test_flickr30k_token_file_without_lists_gets_a_seeded_split(tmp_path):
    names = [f"{1000092795 + i}.jpg" for i in range(20)]
    make_images(tmp_path / "flickr30k-images", names)
    (tmp_path / "results_20130124.token").write_text("\n".join(token_lines(names)), "utf-8")
    ds = load_dataset(tmp_path)
    assert ds.layout == "token"
    assert ds.image_dir == tmp_path / "flickr30k-images"
    assert sorted(sum(ds.splits.values(), [])) == sorted(names)
    assert all(ds.splits[s] for s in ("train", "val", "test"))


def test_malformed_token_line_error_names_file_and_line(tmp_path):
    make_images(tmp_path / "Flicker8k_Dataset", ["a.jpg"])
    lines = token_lines(["a.jpg"]) + ["a.jpg#5 A caption separated by a space, not a TAB ."]
    (tmp_path / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n", "utf-8")
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(tmp_path)
    message = str(excinfo.value)
    assert "Flickr8k.token.txt line 6: expected '<image>#<n><TAB><caption>'" in message


def test_token_line_without_caption_number_is_an_error(tmp_path):
    make_images(tmp_path / "Flicker8k_Dataset", ["a.jpg"])
    (tmp_path / "Flickr8k.token.txt").write_text("a.jpg#0\tA dog .\na.jpg\tA cat .\n", "utf-8")
    with pytest.raises(DatasetError, match=r"Flickr8k\.token\.txt line 2: expected"):
        load_dataset(tmp_path)


def test_non_utf8_token_file_names_file_and_line(tmp_path):
    make_images(tmp_path / "Flicker8k_Dataset", ["a.jpg"])
    data = "\n".join(token_lines(["a.jpg"])).encode() + b"\na.jpg#5\tA na\xefve dog .\n"
    (tmp_path / "Flickr8k.token.txt").write_bytes(data)
    with pytest.raises(DatasetError, match=r"Flickr8k\.token\.txt line 6: not valid UTF-8"):
        load_dataset(tmp_path)


# --- Karpathy JSON layout --------------------------------------------------------------------


def karpathy_entry(
    name: str, split: str, raw: str = "A black dog is running in the snow ."
) -> dict:
    return {
        "sentids": [0],
        "imgid": 0,
        "sentences": [
            {"tokens": raw.lower().rstrip(" .").split(), "raw": raw, "imgid": 0, "sentid": 0}
        ],
        "split": split,
        "filename": name,
    }


def test_karpathy_json_splits_are_used_and_restval_counts_as_train(tmp_path):
    entries = [
        karpathy_entry("a.jpg", "train"),
        karpathy_entry("b.jpg", "restval"),
        karpathy_entry("c.jpg", "val"),
        karpathy_entry("d.jpg", "test", raw=SEED_RAW),
        karpathy_entry("missing.jpg", "train"),
    ]
    payload = {"images": entries, "dataset": "flickr8k"}
    (tmp_path / "dataset_flickr8k.json").write_text(json.dumps(payload), encoding="utf-8")
    make_images(tmp_path / "Flicker8k_Dataset", ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    ds = load_dataset(tmp_path)
    assert ds.layout == "karpathy"
    assert ds.splits == {"train": ["a.jpg", "b.jpg"], "val": ["c.jpg"], "test": ["d.jpg"]}
    assert ds.captions["d.jpg"] == [SEED_CLEAN]
    assert ds.skipped == (Skipped("missing.jpg", "image file missing", 1),)


def test_karpathy_unknown_split_value_is_an_error(tmp_path):
    payload = {"images": [karpathy_entry("a.jpg", "holdout")]}
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps(payload), encoding="utf-8")
    make_images(tmp_path / "flickr30k-images", ["a.jpg"])
    with pytest.raises(DatasetError, match=r"dataset_flickr30k\.json.*'holdout'"):
        load_dataset(tmp_path, "karpathy")


def test_invalid_karpathy_json_names_file_and_line(tmp_path):
    (tmp_path / "dataset_flickr8k.json").write_text('{"images": [\n{"filename": }\n]}', "utf-8")
    make_images(tmp_path / "Images", ["a.jpg"])
    with pytest.raises(DatasetError, match=r"dataset_flickr8k\.json line 2"):
        load_dataset(tmp_path)



# What replaces (a dict: what updates) images[1] of a good file, and the error's end.
WRONG_TYPES = {
    "split-array": ({"split": ["train"]},
                    '"images"[1] (b.jpg): "split" must be a string, found an array'),
    "sentences-string": ({"sentences": "A dog ."},
                         '"images"[1] (b.jpg): "sentences" must be an array, found a string'),
    "raw-null": ({"sentences": [{"raw": None}]},
                 '"images"[1] (b.jpg) "sentences"[0]: "raw" must be a string, found null'),
    "tokens-number": ({"sentences": [{"tokens": ["a", 7]}]},
                      '"images"[1] (b.jpg) "sentences"[0]: "tokens"[1] must be a string, '
                      "found a number"),
    "tokens-string": ({"sentences": [{"raw": "A dog .", "tokens": "a dog"}]},
                      '"images"[1] (b.jpg) "sentences"[0]: "tokens" must be an array, '
                      "found a string"),
    "sentence-empty": ({"sentences": [{}]},
                       '"images"[1] (b.jpg) "sentences"[0]: has neither "raw" nor "tokens"'),
    "filename-array": ({"filename": ["b.jpg"]},
                       '"images"[1]: "filename" must be a string, found an array'),
    "image-string": ("b.jpg",
                     '"images"[1]: expected an object with a "filename" string, found a string'),
}


@pytest.mark.parametrize(("change", "message"), WRONG_TYPES.values(), ids=WRONG_TYPES)
def test_karpathy_field_of_the_wrong_type_is_an_error_naming_file_image_and_key(
        tmp_path, change, message):
    second = karpathy_entry("b.jpg", "test")
    second = {**second, **change} if isinstance(change, dict) else change
    payload = {"images": [karpathy_entry("a.jpg", "train"), second]}
    (tmp_path / "dataset_flickr8k.json").write_text(json.dumps(payload), encoding="utf-8")
    make_images(tmp_path / "Images", ["a.jpg", "b.jpg"])
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(tmp_path)
    assert str(excinfo.value) == f"{tmp_path / 'dataset_flickr8k.json'}: {message}"


def test_karpathy_images_that_are_not_an_array_are_an_error_naming_the_file(tmp_path):
    payload = {"images": {"a.jpg": karpathy_entry("a.jpg", "train")}}
    (tmp_path / "dataset_flickr8k.json").write_text(json.dumps(payload), encoding="utf-8")
    make_images(tmp_path / "Images", ["a.jpg"])
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(tmp_path)
    assert str(excinfo.value) == (f"{tmp_path / 'dataset_flickr8k.json'}: expected a JSON object "
                                  'with an "images" array (Karpathy format), found "images" as '
                                  "an object")


def test_karpathy_json_nested_too_deeply_is_an_error_naming_the_file(tmp_path):
    depth = 100_000
    (tmp_path / "dataset_flickr8k.json").write_text("[" * depth + "]" * depth, encoding="utf-8")
    make_images(tmp_path / "Images", ["a.jpg"])
    with pytest.raises(DatasetError, match=r"dataset_flickr8k\.json: JSON nested too deeply"):
        load_dataset(tmp_path)

# --- seeded split ----------------------------------------------------------------------------


def test_seeded_split_is_by_image_deterministic_and_disjoint(tmp_path):
    names = image_names(40)
    make_images(tmp_path / "Images", names)
    write_kaggle(tmp_path, names)
    first = load_dataset(tmp_path, split_seed=7)
    again = load_dataset(tmp_path, split_seed=7)
    other = load_dataset(tmp_path, split_seed=8)
    assert first.splits == again.splits
    assert first.splits != other.splits
    train, val, test = (set(first.splits[s]) for s in ("train", "val", "test"))
    assert not (train & val or train & test or val & test)
    assert train | val | test == set(first.captions)
    assert all(first.splits[s] == sorted(first.splits[s]) for s in ("train", "val", "test"))


def test_no_test_image_appears_in_train_for_any_seed(tmp_path):
    names = image_names(25)
    make_images(tmp_path / "Images", names)
    write_kaggle(tmp_path, names)
    for seed in range(5):
        ds = load_dataset(tmp_path, split_seed=seed)
        assert not set(ds.splits["test"]) & set(ds.splits["train"])
        assert not set(ds.splits["val"]) & set(ds.splits["train"])


def test_seeded_split_uses_flickr8k_proportions():
    sizes = {k: len(v) for k, v in _seeded_split(image_names(8091), 0).items()}
    assert sizes == {"train": 6000, "val": 1000, "test": 1091}


@pytest.mark.parametrize("n", [3, 4, 5, 10])
def test_seeded_split_of_a_few_images_still_has_val_and_test(n):
    splits = _seeded_split(image_names(n), 0)
    assert len(splits["val"]) >= 1 and len(splits["test"]) >= 1 and len(splits["train"]) >= 1
    assert sum(len(v) for v in splits.values()) == n


# --- errors about the root -------------------------------------------------------------------


def test_unknown_layout_error_says_what_files_were_expected(tmp_path):
    (tmp_path / "README.txt").write_text("hello", "utf-8")
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(tmp_path)
    assert str(excinfo.value) == (
        f"data.root: {tmp_path} has no captions.txt, Flickr8k.token.txt or dataset_flickr8k.json"
    )


def test_explicit_format_whose_file_is_absent_is_an_error(tmp_path):
    write_kaggle(tmp_path, ["a.jpg"])
    with pytest.raises(DatasetError, match="has no dataset_flickr8k.json"):
        load_dataset(tmp_path, "karpathy")


def test_unknown_format_name_is_rejected(tmp_path):
    with pytest.raises(DatasetError, match="unknown format 'coco'"):
        load_dataset(tmp_path, "coco")


def test_missing_image_folder_error_names_the_folders_tried(tmp_path):
    (tmp_path / "Flickr8k.token.txt").write_text("a.jpg#0\tA dog .\n", "utf-8")
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(tmp_path)
    message = str(excinfo.value)
    for folder in ("Flicker8k_Dataset", "Flickr8k_Dataset", "Images", "flickr30k-images"):
        assert str(tmp_path / folder) in message


def test_no_image_matching_any_caption_is_an_error(tmp_path):
    (tmp_path / "Images").mkdir()
    write_kaggle(tmp_path, ["a.jpg"])
    with pytest.raises(DatasetError, match="no usable captions"):
        load_dataset(tmp_path)


# --- Dataset methods -------------------------------------------------------------------------


@pytest.fixture
def small_dataset(tmp_path) -> Dataset:
    names = image_names(12)
    make_images(tmp_path / "Images", names)
    write_kaggle(tmp_path, names + ["gone.jpg"])
    return load_dataset(tmp_path, split_seed=3)


def test_without_drops_unreadable_images_from_captions_and_splits(small_dataset, caplog):
    victim = small_dataset.splits["train"][0]
    with caplog.at_level(logging.WARNING, logger="captioning.data.dataset"):
        smaller = small_dataset.without({victim: "unreadable image: truncated", "nope.jpg": "x"})
    assert victim in small_dataset.captions  # the original is untouched
    assert victim not in smaller.captions
    assert victim not in smaller.splits["train"]
    assert set(sum(smaller.splits.values(), [])) == set(smaller.captions)
    assert smaller.skipped == small_dataset.skipped + (
        Skipped(victim, "unreadable image: truncated", 2),
    )
    assert victim in caplog.text


def test_without_nothing_returns_the_same_dataset(small_dataset):
    assert small_dataset.without({}) is small_dataset


def test_summary_reports_sizes(small_dataset):
    summary = small_dataset.summary()
    assert summary == {
        "layout": "kaggle",
        "images": 12,
        "captions": 24,
        "captions_per_image": 2.0,
        "longest_caption": 5,  # "dog runs on the grass"
        "train": len(small_dataset.splits["train"]),
        "val": len(small_dataset.splits["val"]),
        "test": len(small_dataset.splits["test"]),
        "skipped": 1,
        "skipped_captions": 2,
    }
    assert summary["train"] + summary["val"] + summary["test"] == 12


def test_images_are_sorted_and_paths_point_into_the_image_folder(small_dataset):
    images = small_dataset.images()
    assert images == sorted(small_dataset.captions)
    assert small_dataset.image_path(images[0]) == small_dataset.image_dir / images[0]
    assert small_dataset.image_path(images[0]).is_file()


def test_skipped_images_are_counted_apart_from_captions_dropped_from_kept_images(tmp_path):
    make_images(tmp_path / "Images", ["a.jpg", "b.jpg"])
    write_kaggle(tmp_path, ["a.jpg"], extra_lines=["a.jpg, . ", "b.jpg,42 !", "b.jpg,a",
                                                  "gone.jpg,A dog .", "gone.jpg,A cat ."])
    ds = load_dataset(tmp_path)
    assert sorted((row.image, row.captions) for row in ds.skipped_images()) == [
        ("b.jpg", 2), ("gone.jpg", 2)]  # a.jpg is kept, with one caption fewer
    assert ds.summary()["skipped_captions"] == 5


def test_the_digest_changes_with_the_captions_and_the_profile_counts_each_split(tmp_path):
    make_images(tmp_path / "Images", ["a.jpg", "b.jpg", "c.jpg"])
    write_kaggle(tmp_path, ["a.jpg", "b.jpg", "c.jpg"])
    first = load_dataset(tmp_path)
    assert first.digest() == load_dataset(tmp_path).digest()
    profile = first.profile()
    assert sum(profile[f"{s}_images"] for s in ("train", "val", "test")) == 3
    assert sum(profile[f"{s}_captions"] for s in ("train", "val", "test")) == sum(
        len(c) for c in first.captions.values())
    write_kaggle(tmp_path, ["a.jpg", "b.jpg", "c.jpg"], extra_lines=["a.jpg,A new caption ."])
    assert load_dataset(tmp_path).digest() != first.digest()

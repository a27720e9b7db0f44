"""Reading a JSON (or UTF-8 text) file whose every failure is one line naming the file."""

from __future__ import annotations

import pytest

from captioning.errors import DatasetError, ModelDirError
from captioning.jsonfile import read_json, read_text


def test_a_json_file_is_read_with_or_without_a_byte_order_mark(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b'{"words": ["caf\xc3\xa9"]}')
    assert read_json(path, DatasetError) == {"words": ["café"]}
    path.write_bytes(b"\xef\xbb\xbf[1]")
    assert read_json(path, DatasetError) == [1]


def test_invalid_json_is_the_given_error_naming_file_and_line(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"a": 1,\n "b": }\n', encoding="utf-8")
    with pytest.raises(ModelDirError) as excinfo:
        read_json(path, ModelDirError)
    assert str(excinfo.value) == f"{path} line 2: not valid JSON (Expecting value)"


def test_bad_utf8_names_file_line_and_byte(tmp_path):
    path = tmp_path / "vocab.json"
    path.write_bytes(b'{"a":\n "\xff"}')
    with pytest.raises(DatasetError) as excinfo:
        read_json(path, DatasetError)
    assert str(excinfo.value) == (
        f"{path} line 2: not valid UTF-8 (byte 0xff); re-save the file as UTF-8")


def test_json_nested_too_deeply_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    with pytest.raises(DatasetError) as excinfo:
        read_json(path, DatasetError)
    assert str(excinfo.value).startswith(f"{path}: JSON nested too deeply")
    assert len(str(excinfo.value).splitlines()) == 1


def test_a_number_too_long_to_convert_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "big.json"
    path.write_text("[" + "9" * 5000 + "]", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"big\.json: not valid JSON \(Exceeds the limit"):
        read_json(path, DatasetError)


def test_a_file_over_the_size_limit_is_refused_saying_the_limit(tmp_path):
    path = tmp_path / "huge.json"
    path.write_text("[" + "1," * 50 + "1]", encoding="utf-8")
    with pytest.raises(DatasetError) as excinfo:
        read_json(path, DatasetError, max_bytes=100)
    assert str(excinfo.value) == (
        f"{path}: too large to read (103 bytes; the limit is 100 bytes)")
    assert read_json(path, DatasetError, max_bytes=103) == [1] * 51


def test_the_limit_reads_in_mebibytes_when_it_is_large(tmp_path):
    path = tmp_path / "captions.txt"
    path.write_bytes(b"x" * (3 << 20))
    with pytest.raises(DatasetError, match=r"too large to read \(3 MiB; the limit is 2 MiB\)"):
        read_text(path, DatasetError, max_bytes=2 << 20)


def test_a_file_that_cannot_be_read_is_the_given_error_naming_it(tmp_path):
    with pytest.raises(ModelDirError) as excinfo:
        read_json(tmp_path / "missing.json", ModelDirError)
    assert str(excinfo.value) == (
        f"{tmp_path / 'missing.json'}: cannot read it (No such file or directory)")
    with pytest.raises(ModelDirError, match=r": cannot read it \(Is a directory\)"):
        read_text(tmp_path, ModelDirError)

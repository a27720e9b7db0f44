"""How the commands print a table of numbers (`captioning evaluate`, `prepare`): a count logged
as a float metric (param_count 123456.0) as a count, every other float to four places."""

from __future__ import annotations

from captioning.cli import _print_table


def test_integral_floats_of_a_thousand_or_more_print_as_counts(capsys):
    _print_table({"param_count": 123456.0, "negative count": -2000.0, "exactly": 1000.0,
                  "val_cider": 0.51234567, "twelve": 12.0, "just under": 999.0,
                  "a fraction": 1234.5, "infinite": float("inf"), "an int": 7,
                  "text": "20 / 5 / 5"})
    assert capsys.readouterr().out.splitlines() == [
        "  param_count     123456",
        "  negative count  -2000",
        "  exactly         1000",
        "  val_cider       0.5123",
        "  twelve          12.0000",
        "  just under      999.0000",
        "  a fraction      1234.5000",
        "  infinite        inf",
        "  an int          7",
        "  text            20 / 5 / 5",
    ]

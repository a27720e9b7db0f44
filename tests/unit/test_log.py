"""TensorFlow's and JAX's start-up lines kept out of what a command prints (issue 39): by
TF_CPP_MIN_LOG_LEVEL, which the command sets to 3 unless its user set it, and by a filter on
the lines TensorFlow writes before it reads it."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from captioning import log
from conftest import REPO, cli_env, run_cli, start_up_noise

# TensorFlow 2.21's own lines as it starts on a machine without a GPU, written to stderr
# before absl logging is initialised, so TF_CPP_MIN_LOG_LEVEL never reaches them.
ABSL = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
INFO = (b"I0000 00:00:1796688403.112651    4058 port.cc:153] oneDNN custom operations are on. "
        b"You may see slightly different numerical results.\n")
CUDA = (b"I0000 00:00:1796688403.114114    4058 cudart_stub.cc:31] Could not find cuda drivers "
        b"on your machine, GPU will not be used.\n")
WARNING = b"W0000 00:00:1796688403.2   4058 some_op.cc:7] a warning\n"
ERROR = (b"E0000 00:00:1796688409.332112    4058 cuda_platform.cc:52] failed call to cuInit: "
         b"INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n")
FATAL = b"F0000 00:00:1796688409.4   4058 cpu_feature_guard.cc:1] needs AVX\n"
OURS = b"ours: a line that is no log line\n"


@pytest.mark.parametrize(("level", "kept"), [
    (3, FATAL + OURS),
    (1, WARNING + ERROR + FATAL + OURS),
])
def test_the_lines_written_while_filtered_are_kept_by_their_severity(capfd, level, kept):
    with log.stderr_filtered(level):
        os.write(2, ABSL + INFO + CUDA + WARNING + ERROR + FATAL + OURS)
    assert capfd.readouterr().err == kept.decode()


def test_what_python_and_a_crash_wrote_while_filtered_still_reaches_stderr():
    script = ("import os, sys\nfrom captioning.log import stderr_filtered\n"
              "with stderr_filtered(3):\n"
              "    print('printed by Python', file=sys.stderr)\n"
              f"    os.write(2, {INFO + b'The TensorFlow library needs AVX' + bytes([10])!r})\n"
              "    os.abort()\n")
    crashed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             env=cli_env(), cwd=REPO, timeout=60)
    assert crashed.returncode != 0
    assert crashed.stderr == "printed by Python\nThe TensorFlow library needs AVX\n"


@pytest.fixture
def fresh_process(monkeypatch):
    """This process as a command starts it: no TensorFlow imported, no level set; what
    quiet_start_up changes is put back after."""
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    jax = logging.getLogger("jax._src.xla_bridge")
    level = jax.level
    yield monkeypatch
    jax.setLevel(level)


def quiet_finders() -> list:
    return [finder for finder in sys.meta_path if isinstance(finder, log._QuietImport)]


def test_by_default_tensorflow_logs_at_3_and_its_import_is_filtered(fresh_process):
    log.quiet_start_up()
    log.quiet_start_up()  # a second call changes nothing
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"
    assert [finder.level for finder in quiet_finders()] == [3]
    assert logging.getLogger("jax._src.xla_bridge").level == logging.WARNING


@pytest.mark.parametrize("level", ["0", "not a number"])
def test_a_level_the_user_set_is_kept_and_below_1_nothing_is_filtered(fresh_process, level):
    fresh_process.setenv("TF_CPP_MIN_LOG_LEVEL", level)
    log.quiet_start_up()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == level  # and what the command starts gets it
    assert quiet_finders() == []
    assert logging.getLogger("jax._src.xla_bridge").level != logging.WARNING


def test_a_level_the_user_set_above_0_filters_at_that_level(fresh_process):
    fresh_process.setenv("TF_CPP_MIN_LOG_LEVEL", "1")
    log.quiet_start_up()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"
    assert [finder.level for finder in quiet_finders()] == [1]


STATE = ("import os, sys\nfrom captioning import cli, log\n"
         "sys.argv = ['captioning', 'experiments', 'list']\ncode = cli.main()\n"
         "print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'), "
         "any(isinstance(f, log._QuietImport) for f in sys.meta_path), code)\n")


@pytest.mark.parametrize(("env", "state"), [
    ({}, "3 True 0"),
    ({"TF_CPP_MIN_LOG_LEVEL": "0"}, "0 False 0"),  # the opt-in: passed on, nothing filtered
])
def test_the_command_sets_the_level_its_processes_inherit_unless_its_user_did(env, state):
    ran = subprocess.run([sys.executable, "-c", STATE], capture_output=True, text=True,
                         env=cli_env(**env), cwd=REPO, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines()[-1] == state


@pytest.mark.slow
def test_a_command_that_imports_tensorflow_prints_none_of_its_start_up_lines(tmp_path):
    drawn = run_cli("sample-data", str(tmp_path / "data"), "--images", "10")
    assert drawn.returncode == 0, drawn.stderr
    result = run_cli("prepare", "--set", f"data.root={tmp_path / 'data'}",
                     "--set", "encoder.weights=none", "--set", "encoder.image_size=75",
                     "--set", f"encoder.cache_dir={tmp_path / 'cache'}", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert start_up_noise(result) == []  # it extracted features on TensorFlow
    assert "features (inception_v3)" in result.stdout

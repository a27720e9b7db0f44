"""Shared by the benchmarks that import it (train and decode throughput, quality, sweep
efficiency): the seed's model sizes, and what they print about the machine."""

from __future__ import annotations

import argparse
import os
import platform

import keras
import numpy as np


def machine_info() -> list[str]:
    lines = [f"python {platform.python_version()}, {platform.platform()}"]
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       cpu)
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    lines.append(f"cpu: {cpu}; os.cpu_count()={os.cpu_count()}, usable cores={usable}")
    versions = (f"keras {keras.__version__} (backend {keras.backend.backend()}), "
                f"numpy {np.__version__}")
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        versions += f", tensorflow {tf.__version__}, GPUs: {len(gpus)}"
    lines.append(versions)
    return lines


def print_timing_notes(times: list[list[float]], unit: str, load_before: tuple[float, ...],
                       load_after: tuple[float, ...]) -> None:
    """Every timing behind a best-of figure, and how busy the machine was around them."""
    if len(times[0]) > 1:
        print(f"seconds: best of {len(times[0])} interleaved {unit}; all: "
              + "; ".join(" ".join(f"{t:.2f}" for t in ts) for ts in times))
    print("load average (1, 5, 15 min) before timing: "
          + ", ".join(f"{x:.2f}" for x in load_before)
          + "; after: " + ", ".join(f"{x:.2f}" for x in load_after))


def add_model_size_args(parser: argparse.ArgumentParser) -> None:
    """The sizes both sides of a benchmark share; the defaults are the seed's."""
    parser.add_argument("--vocab", type=int, default=2000, help="vocabulary size (default 2000)")
    parser.add_argument("--feature-dim", type=int, default=2048)
    parser.add_argument("--units", type=int, default=256, help="LSTM units (seed: 256)")
    parser.add_argument("--embedding-dim", type=int, default=256)

"""Shared helpers of the performance benchmark: timing, percentiles, machine facts, message pools."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
CATALOG = ROOT / "intents" / "telecom_zh.yaml"


def percentiles_ms(seconds: list[float] | np.ndarray) -> dict[str, float]:
    """p50 / p90 / p99 / mean of durations given in seconds, in milliseconds."""
    values = np.asarray(seconds, dtype=np.float64) * 1e3
    return {"p50": float(np.percentile(values, 50)), "p90": float(np.percentile(values, 90)),
            "p99": float(np.percentile(values, 99)), "mean": float(values.mean())}


def machine() -> dict:
    """nproc, CPU model, RAM, Python and BLAS facts of this machine."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    return {"nproc": os.cpu_count(), "cpu": cpu, "ram_gb": round(mem_kb / 2**20, 1),
            "python": platform.python_version(), "numpy": np.__version__,
            "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE")}


def read_texts(folder: str, split: str) -> list[str]:
    """The texts of one split of a shared dataset."""
    with open(DATA / folder / f"{split}.jsonl", encoding="utf-8") as handle:
        return [json.loads(line)["text"] for line in handle if line.strip()]


def message_pool(limit: int | None = None) -> list[str]:
    """Distinct real user messages, Chinese (SMP2017) and English (CLINC150) interleaved."""
    zh = list(dict.fromkeys(read_texts("smp2017_ecdt", "test") + read_texts("smp2017_ecdt", "train")))
    en = list(dict.fromkeys(read_texts("clinc150", "test") + read_texts("clinc150", "validation")
                            + read_texts("clinc150", "train")))
    pool = [text for pair in zip(zh, en) for text in pair] + zh[len(en):] + en[len(zh):]
    return pool[:limit] if limit else pool


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, timeout_s: float = 120.0) -> None:
    """Poll ``url`` until it answers 200; raise if the process dies or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the process serving {url} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout_s} s")


def rss_mb(pid: int) -> dict[str, float]:
    """Current (VmRSS) and peak (VmHWM) resident memory of a process, in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return {"rss_mb": round(fields["VmRSS"], 1), "peak_rss_mb": round(fields["VmHWM"], 1)}


@dataclass
class Sidecar:
    """A ``gatekeeper serve`` process on loopback."""

    process: subprocess.Popen
    base_url: str

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.process.pid


@contextmanager
def sidecar(catalog: Path, state_dir: Path, *flags: str, env: dict | None = None,
            timeout_s: float = 180.0) -> Iterator[Sidecar]:
    """Run ``gatekeeper serve`` on a free loopback port until the block ends."""
    port = free_port()
    state_dir.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, "GATEKEEPER_STATE_DIR": str(state_dir), **(env or {})}
    command = [sys.executable, "-m", "gatekeeper", "serve", "--catalog", str(catalog), "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "warning", *flags]
    log = (state_dir / f"serve-{port}.log").open("wb")
    process = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url + "/readyz", process, timeout_s)
        yield Sidecar(process, base_url)
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()

"""Hardware and software fingerprints stamped on every record.

The fingerprint is stable across runs on one kind of machine (CPU model + cores,
accelerator name + memory + driver), so reports can group records by machine kind;
``hardware.label`` lets users name a machine themselves.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import socket
import sys
from typing import Any, Mapping

import psutil

from harness.identity import package_versions


def cpu_model() -> str:
    """Marketing name of the CPU (from /proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def fingerprint(cpu: str, cores: int, accelerator: Mapping[str, Any] | None) -> str:
    """Short stable id of a machine kind: the same CPU+cores+accelerator gives the same id."""
    acc = accelerator or {}
    key = "|".join([cpu, str(cores), str(acc.get("name", "")), str(acc.get("memory_mib", "")), str(acc.get("driver", ""))])
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def describe(accelerator: Mapping[str, Any] | None = None, label: str | None = None) -> dict[str, Any]:
    """The record's ``hardware`` section."""
    cpu = cpu_model()
    cores = os.cpu_count() or 1
    return {
        "cpu_model": cpu,
        "cores": cores,
        "physical_cores": psutil.cpu_count(logical=False) or cores,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "arch": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "hostname": socket.gethostname(),
        "accelerator": dict(accelerator) if accelerator else None,
        "label": label,
        "fingerprint": fingerprint(cpu, cores, accelerator),
    }


SOFTWARE_PACKAGES = ("harness", "torch", "transformers", "onnx", "onnxruntime", "onnxscript", "numpy", "hydra-core", "pluggy")


def software(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Versions of Python and the libraries that shape a measurement."""
    return {"python": sys.version.split()[0], **package_versions(SOFTWARE_PACKAGES, missing=None), **(extra or {})}


def parse_driver_version(text: str) -> str | None:
    """The NVIDIA kernel-module version from ``/proc/driver/nvidia/version`` text."""
    match = re.search(r"Kernel Module(?: for [\w-]+)?\s+(\d+(?:\.\d+)+)", text)
    return match.group(1) if match else None


def nvidia_driver_version() -> str:
    try:
        with open("/proc/driver/nvidia/version", encoding="utf-8") as handle:
            return parse_driver_version(handle.read()) or "unknown"
    except OSError:
        return "unknown"


def cuda_device_info(index: int = 0) -> dict[str, Any]:
    """Accelerator fingerprint of CUDA device ``index`` (name, memory, SMs, driver, CUDA)."""
    import torch

    props = torch.cuda.get_device_properties(index)
    return {
        "name": props.name,
        "memory_mib": int(props.total_memory // 2**20),
        "compute_capability": f"{props.major}.{props.minor}",
        "multiprocessors": props.multi_processor_count,
        "driver": nvidia_driver_version(),
        "cuda_runtime": str(torch.version.cuda),
    }


def host_memory_mib() -> dict[str, float]:
    """This process's resident memory now (``rss_mib``) and at its peak (``peak_rss_mib``), in MiB."""
    figures = {"rss_mib": psutil.Process().memory_info().rss / 2**20}
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        figures["peak_rss_mib"] = peak / (2**20 if sys.platform == "darwin" else 2**10)
    except ImportError:  # no resource module (Windows): the current RSS is all there is
        pass
    return figures

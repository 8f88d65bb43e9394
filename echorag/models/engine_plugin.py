"""EchoRAG's vLLM plugin: the ``vllm.general_plugins`` entry point (``pyproject.toml``),
which vLLM loads in each of its processes (the serving process, the engine core, the
workers) before it builds a model."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys

from echorag.models import engine_cpu_lora

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a process vLLM started (engine core, worker): be killed when the parent dies.
    A Serve replica killed outright (a crash, ``ray stop --force``) otherwise leaves its
    engine core and worker running on their own, each spinning a core and holding the
    KV cache, until someone kills them by hand."""
    parent = multiprocessing.parent_process()
    if sys.platform != "linux" or parent is None:
        return
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent.pid:  # it died before the line above
        os._exit(1)


def register() -> None:
    die_with_parent()
    engine_cpu_lora.install()

"""Worker classes: vLLM's own workers, running TRAIL's capture runner.

vLLM builds the model runner inside ``init_device``; the worker then gives that
same object TRAIL's subclass (capture + probe), for the CPU and the GPU runner alike.
"""

from __future__ import annotations

from vllm.v1.worker.cpu_worker import CPUWorker
from vllm.v1.worker.gpu_model_runner import GPUModelRunner
from vllm.v1.worker.gpu_worker import Worker as GPUWorker

from trail_scheduler.vllm.runner import trail_runner_class


class TrailWorkerMixin:
    def init_device(self) -> None:
        super().init_device()
        runner_class = type(self.model_runner)
        if not issubclass(runner_class, GPUModelRunner):
            raise RuntimeError(f"TRAIL needs vLLM's V1 model runner, got {runner_class.__name__}")
        self.model_runner.__class__ = trail_runner_class(runner_class)


class TrailCPUWorker(TrailWorkerMixin, CPUWorker):
    pass


class TrailGPUWorker(TrailWorkerMixin, GPUWorker):
    pass

"""The vLLM V1 integration: hidden-state capture and the probe in the worker, the TRAIL
scheduler subclass in the engine core, and the RPC surface the admin API calls.

Select with ``--scheduler-cls trail_scheduler.vllm.scheduler.trail_scheduler`` and
``--worker-cls trail_scheduler.vllm.worker.TrailCPUWorker`` (or ``TrailGPUWorker``);
``trail serve`` sets both.
"""

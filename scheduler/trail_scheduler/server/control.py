"""The API-server side of the engine link (see TrailScheduler.__call__)."""


async def call_scheduler(engine, operation: str, *args):
    """Run a TRAIL operation in the engine-core process, between engine steps.

    vLLM's utility call resolves its name on the engine core; ``"scheduler"`` is the
    TrailScheduler, whose ``__call__`` dispatches the operation.
    """
    return await engine.engine_core.call_utility_async("scheduler", operation, *args)

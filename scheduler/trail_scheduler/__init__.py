"""TRAIL engine side: length prediction and scheduling inside each vLLM pod."""

__version__ = "0.1.0"

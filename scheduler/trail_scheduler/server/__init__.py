"""``trail serve``: vLLM's OpenAI server with the TRAIL scheduler, the admin API and
``trail_`` metrics."""

"""trail_operator: the kopf operator for LLMServer resources (DESIGN.md §3-§4)."""

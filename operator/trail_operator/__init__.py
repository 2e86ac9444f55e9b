"""trail_operator: the kopf operator for LLMServer resources."""

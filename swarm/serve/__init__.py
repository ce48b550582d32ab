"""`swarm serve`: the swarm behind an OpenAI-compatible HTTP API, with a chat page and Prometheus metrics."""

"""One module per stage. Each exposes free functions with explicit arguments; the orchestrator chains them."""

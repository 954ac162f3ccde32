"""FastAPI ``POST /retrieve`` around one engine: batching, admission control, deadlines, health, metrics.
Imports sid_index and decoding (through the bundle format), never training."""

"""`llmgen serve`'s server: OpenAI's HTTP API (app.py) over one model and its batching engine (service.py),
requests read as schema.py's models. Imported only by `llmgen serve` (FastAPI and uvicorn load here)."""

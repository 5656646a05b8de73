"""The FastAPI layer: open data and platform operations over HTTP."""

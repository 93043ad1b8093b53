"""The asyncio (and uvloop) backend."""

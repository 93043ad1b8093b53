"""Runtime backends: the only code that imports asyncio, uvloop or trio."""

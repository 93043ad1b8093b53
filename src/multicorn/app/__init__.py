"""The ASGI bridge: runtime-neutral, protocol-neutral. Turns stream events into ASGI calls."""

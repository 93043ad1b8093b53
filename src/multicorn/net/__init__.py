"""Listening sockets: parsing bind addresses (`binds`) and opening them (`sockets`).

Runtime-neutral: nothing here imports an event loop library.
"""

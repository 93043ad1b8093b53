"""Sans-IO protocol cores: bytes in, stream events out; commands in, bytes out. No I/O, no clock."""

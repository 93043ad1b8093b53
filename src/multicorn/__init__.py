"""multicorn: an ASGI server on asyncio or trio (HTTP/1.1 today; HTTP/2, HTTP/3, WebSocket next).

Public API only; everything else is private to the package.
"""

from multicorn._version import __version__ as __version__
from multicorn.config import Config as Config
from multicorn.serve import Server as Server
from multicorn.serve import serve as serve

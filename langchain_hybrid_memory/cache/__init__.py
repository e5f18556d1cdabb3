"""The Redis side: each session's window, its Lua scripts, and the write-behind outbox streams.

- `scripts.py` and `lua/`: the Lua scripts, one file per operation, KEYS and common ARGV named by a prelude.
- `protocol.py`: commands and reply parsing without I/O (`Commands`), and the values they carry.
- `connections.py`: client setup (single server, Cluster, Sentinel), shared with the CLI.
- `shared_connection.py`: one pipelined connection per event loop for the async hot path; `tracking.py`: the
  checkpoint values it keeps by Redis key tracking, under each thread's lease.
- `sync_client.py` / `async_client.py`: the clients (`SyncHotPath`, `RedisCache`).

Connection failures surface as `CacheDown`; the engine's failover (`health.py`) decides what happens next.
"""

from .async_client import RedisCache
from .connections import SENTINEL_SCHEMES, detect_cluster, make_client, parse_sentinel_url
from .protocol import AppendResult, CachedContext, CacheDown, Miss, OwnershipConflict, Refill, TouchLog
from .sync_client import SyncHotPath

__all__ = [
    "SENTINEL_SCHEMES",
    "AppendResult",
    "CacheDown",
    "CachedContext",
    "Miss",
    "OwnershipConflict",
    "RedisCache",
    "Refill",
    "SyncHotPath",
    "TouchLog",
    "detect_cluster",
    "make_client",
    "parse_sentinel_url",
]

"""The map's storage engine (format 3; format 2 read): one SQLite database per map directory, written by one
process at a time, read by any number without locks.

* :mod:`.records` — canonical bytes and CRC32 of every stored row;
* :mod:`.lock` — the writer lock (an OS lock that dies with its process);
* :mod:`.pending` — accepted keyframes whose raw image waits for the encoder;
* :mod:`.database` — the schema, consistent read snapshots and durable write transactions;
* :mod:`.legacy` — the reader of format-1 maps (v0.3), migrated on their first write.

:class:`vpr_ros.mapping.map_store.VprMap` is the in-memory view on top of it.
"""

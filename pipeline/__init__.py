"""Sharding, Ray actors, storage and manifests (the distributed pipeline; see issue 5).

Knows codecs only through ``codec.encode`` / ``codec.decode``. Nothing is implemented here yet.
"""

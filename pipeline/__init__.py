"""The distributed pipeline: shards, Ray actors, storage and manifests.

Knows codecs only through ``pipeline.items`` (``ItemCodec``, ``CodecFactory``); ``jobs`` wires
the callic codec in. ``driver`` runs an archive job's shards, ``restore`` and ``status`` read
a job back, ``shard`` codes one shard (plain Python), ``cluster`` and ``pool`` hold the Ray side.
"""

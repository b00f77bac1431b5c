"""Tools that turn recordings into shard folders (format ``a2v-het-shards/1``, see ``docs/shard-format.md``).

``python -m data_tools shard | annotations | inspect | synth`` (:mod:`data_tools.cli`). Modules: ``sources`` (finding,
checking and reading recordings), ``grouping`` (groups and splits), ``annotations`` (Raven, Audacity, Sonic
Visualiser, CSV), ``shard`` (the resumable sharding run), ``shard_writer`` (tar shards and manifests),
``inspect_shards``, ``synth`` (synthetic clips).
"""

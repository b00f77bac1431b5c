"""Tools that turn recordings into shard folders (format ``a2v-het-shards/1``, see ``docs/shard-format.md``).

``python -m data_tools shard | annotations | inspect | synth | synth-calls`` (:mod:`data_tools.cli`). Modules:
``sources`` (finding, checking and reading recordings), ``grouping`` (groups and splits), ``annotations`` (Raven,
Audacity, Sonic Visualiser, CSV), ``shard`` (the resumable sharding run), ``shard_writer`` (tar shards and
manifests), ``inspect_shards``, ``synth`` (synthetic clips; the synthetic shards a recipe names, written before
training by ``ensure_synth_shards``; the synthetic call-type probe set).
"""

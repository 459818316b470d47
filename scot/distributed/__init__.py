"""Sharing ``scot eval`` and ``scot search-layers`` over processes (``torchrun``).

Four modules, each depending only on the ones above it:

* :mod:`.launch`: this process's place in a torchrun job, read from the environment
  (:class:`~.launch.Launch`), and the device and backend each rank uses;
* :mod:`.group`: the ranks of a job seen from one of them (:class:`~.group.Group`:
  heartbeats, collective steps, sums) and the errors that stop a rank
  (:class:`~.group.PeerError`, :class:`~.group.Stopped`);
* :mod:`.world`: what the commands see (:data:`~.world.World`): the group, or the world of
  one process (:class:`~.world.WorldOfOne`), whose collectives do nothing, so the commands
  run one code path whatever the number of processes; :func:`~.world.start` picks one;
* :mod:`.sharding`: the pure split of a pair list over ranks, pairs that share images on
  one rank (:func:`~.sharding.shard_by_images`, :class:`~.sharding.Sharding`).
"""

"""The deterministic simulator: the real `Replica` on a virtual clock and an in-memory
network (docs/faults.md). `host` drives one replica as a node does; `auth` makes the
keys; `network` is the link model with its faults; `engine` runs one seeded schedule
and checks the invariants; `scenario` runs many seeds and reports."""

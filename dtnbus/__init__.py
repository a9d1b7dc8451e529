"""dtnbus: a PBFT message bus for a Decentralized Training Network.

The protocol core (`dtnbus.replica`) is a pure state machine; transport, shaping,
storage, metrics and the CLI are rings around it.
"""

__version__ = "0.1.0"

"""Two error classes that say whose fault a failure is."""


class LocalError(Exception):
    """Our misuse: a bad flag, a bad config file, a bug. Shown to the user as one line."""


class PeerError(Exception):
    """Bad or hostile input from a peer: the message is dropped and counted under `reason`."""

    def __init__(self, reason: str, detail: str = "", msg: object = None,
                 digest: bytes = b"") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.msg = msg  # the parsed message, when only its sender was wrong
        self.digest = digest

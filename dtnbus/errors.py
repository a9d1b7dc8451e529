"""Error classes that say whose fault a failure is, and so which exit status it gets."""


class LocalError(Exception):
    """Our misuse: a bad flag, a bad config file, a bug. Shown to the user as one line, exit 2."""


class ProblemFound(Exception):
    """Not the user's mistake but a problem found in the world: a damaged ledger, a cluster
    that does not answer. Shown as one line, exit status 1."""


class PeerError(Exception):
    """Bad or hostile input from a peer: the message is dropped and counted under `reason`."""

    def __init__(self, reason: str, detail: str = "", msg: object = None,
                 digest: bytes = b"") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.msg = msg  # the parsed message, when only its sender was wrong
        self.digest = digest

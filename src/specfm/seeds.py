"""Per-step seeds derived from the one master seed in config.

Each step (and each ensemble member, fold or target) gets its own stream, so adding a target
or a member never changes the random numbers of the others.
"""

import hashlib


def derive(master: int, *names: object) -> int:
    """A 32-bit seed from the master seed and a path of names, e.g. derive(s, "stars", "member", 3)."""
    key = "/".join([str(master), *map(str, names)]).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little")

"""`eve-launch -- eve-train ...`: start this node's ranks (placeholder; real launcher follows)."""


def main() -> int:  # pragma: no cover - replaced in the next commit
    raise SystemExit("eve-launch: not implemented yet")

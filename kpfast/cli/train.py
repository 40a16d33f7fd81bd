"""Placeholder: being written."""


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="(not yet available)")
    p.set_defaults(run=lambda args: print(f"kpfast {name}: not yet available") or 1)

"""The closing summary every benchmark prints: one row per measure, its value and its verdict against the target."""
from __future__ import annotations


def verdict(ok: bool, target: str) -> str:
    """'ok (target T)' or 'FAIL (target T)'."""
    return f"{'ok' if ok else 'FAIL'} (target {target})"


def print_summary(rows: list[tuple[str, str, str]]) -> int:
    """Print (name, value, verdict) rows as an aligned table; exit status 1 if any verdict failed, else 0."""
    width = max(len(r[0]) for r in rows)
    print("\nsummary")
    for name, value, target in rows:
        print(f"  {name:<{width}}  {value:>8}  {target}")
    return 0 if all(not t.startswith("FAIL") for _, _, t in rows) else 1

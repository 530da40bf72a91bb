"""bench-launcher-death: how long workers outlive their killed launcher (docs/reliability.md)."""

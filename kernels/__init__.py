"""Fused ops: each module holds a Triton kernel and its plain-torch twin (later issues)."""

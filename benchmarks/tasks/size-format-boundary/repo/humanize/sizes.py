"""Human-readable byte counts (binary units)."""

UNITS = ["B", "KiB", "MiB", "GiB", "TiB"]


def format_size(size: int) -> str:
    """1536 -> '1.5 KiB'. Sizes below 1 KiB are shown in bytes."""
    if size < 0:
        raise ValueError("size must not be negative")
    value = float(size)
    unit = 0
    while value > 1024 and unit < len(UNITS) - 1:
        value /= 1024
        unit += 1
    if unit == 0:
        return f"{size} B"
    return f"{value:.1f} {UNITS[unit]}"

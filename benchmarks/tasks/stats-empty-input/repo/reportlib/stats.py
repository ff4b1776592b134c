"""Summary statistics for the daily report."""


def summarize(values: list[float]) -> dict:
    """Count, mean, min and max of `values`."""
    total = sum(values)
    return {
        "count": len(values),
        "mean": total / len(values),
        "min": min(values),
        "max": max(values),
    }


def format_summary(summary: dict) -> str:
    if summary["count"] == 0:
        return "no data"
    return (f"{summary['count']} values, mean {summary['mean']:.2f} "
            f"(min {summary['min']}, max {summary['max']})")

from .csvline import parse_line
from .importer import import_contacts

__all__ = ["import_contacts", "parse_line"]

"""``python -m gpt2``: see ``gpt2.cli``."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())

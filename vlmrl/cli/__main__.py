"""``python -m vlmrl.cli``."""

from vlmrl.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m alray``: the same command as ``alray``."""
from alray.cli import main

if __name__ == "__main__":
    main(prog_name="alray")

"""`python -m msgq`: the same command as the `msgq` console script."""

from msgq.cli.main import main

if __name__ == "__main__":
    main()

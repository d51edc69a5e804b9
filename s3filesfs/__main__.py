"""``python -m s3filesfs``: the same command as the ``s3filesfs`` console script."""

from .cli import main

main(prog_name="s3filesfs")

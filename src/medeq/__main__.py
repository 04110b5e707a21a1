"""``python -m medeq``: the same as the ``medeq`` command."""

from .cli import main_exit

main_exit()

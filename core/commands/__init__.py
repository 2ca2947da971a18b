"""Sub-commands of the ``ctbundles`` console command, one module each.

Every module defines ``add_parser(subparsers)`` (registers its arguments and help) and
``run(args) -> int`` (the exit status).
"""

COMMANDS = ("check", "score", "synth", "datalist", "demo", "orcascore_reference", "export", "batch", "bench")

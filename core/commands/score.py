"""`ctbundles score`: calcium scores of a CT and its label (not written yet)."""


def add_parser(subparsers):
    parser = subparsers.add_parser("score", help="calcium scores of a CT and its label")
    parser.set_defaults(func=run)
    return parser


def run(args):
    raise SystemExit("ctbundles score: not implemented yet")

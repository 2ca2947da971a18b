"""`ctbundles check`: print what the input layer finds in a CT (not written yet)."""


def add_parser(subparsers):
    parser = subparsers.add_parser("check", help="print what the input layer finds in a CT")
    parser.set_defaults(func=run)
    return parser


def run(args):
    raise SystemExit("ctbundles check: not implemented yet")

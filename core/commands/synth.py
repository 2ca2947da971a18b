"""`ctbundles synth`: generate a synthetic CT cohort (not written yet)."""


def add_parser(subparsers):
    parser = subparsers.add_parser("synth", help="generate a synthetic CT cohort")
    parser.set_defaults(func=run)
    return parser


def run(args):
    raise SystemExit("ctbundles synth: not implemented yet")

"""`ctbundles datalist`: write a MONAI datalist for a dataset layout (not written yet)."""


def add_parser(subparsers):
    parser = subparsers.add_parser("datalist", help="write a MONAI datalist for a dataset layout")
    parser.set_defaults(func=run)
    return parser


def run(args):
    raise SystemExit("ctbundles datalist: not implemented yet")

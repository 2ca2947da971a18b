"""`ctbundles bench`: latency, speed-up over a naive configuration, and memory as the scan grows.

Per bundle, on its standard generated case (chest CT 512x512x240, cardiac CT 512x512x60, raw head CT
512x512x200, ISLES slab 256x256x16): end-to-end latency with its parts (read + preprocess, network,
the rest) and the same pipeline with one slice or window per forward pass, in the same run; then
the chest CT bundle on 60, 120, 240, 480 slices (time and peak memory, each in a fresh process).
CPU with --threads threads always; CUDA fp32 and AMP when a GPU is present. Writes bench.json and
bench.md (Markdown tables) into --out. Uses the shipped models/ when complete, else random weights
of each config's network (timings do not depend on weight values).
"""

from __future__ import annotations


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "bench",
        help="benchmark the bundles' inference: latency, naive-configuration speed-up, scaling with slices",
        description=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for bench.json and bench.md")
    parser.add_argument("--bundles", default=None, metavar="B1,B2", help="bundles to time (default all four)")
    parser.add_argument("--slices", default="60,120,240,480", metavar="N1,N2", help="chest CT scaling series ('' to skip; default 60,120,240,480)")
    parser.add_argument("--in-plane", type=int, default=None, metavar="N", help="in-plane size of every case instead of 512 / 256 (quick runs)")
    parser.add_argument("--shape", action="append", default=[], metavar="BUNDLE=X,Y,Z", help="case shape of one bundle instead of its standard case")
    parser.add_argument("--repeats", type=int, default=1, metavar="N", help="timed repeats per measurement (median reported; default 1)")
    parser.add_argument("--threads", type=int, default=2, metavar="N", help="torch CPU threads (default 2)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CPU, and CUDA when present")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive configuration")
    parser.add_argument("--random-weights", action="store_true", help="random weights even where models/ ships weights")
    parser.add_argument("--set", action="append", default=[], metavar="BUNDLE:KEY=VALUE", help="config override of one bundle (VALUE as JSON when it parses)")
    parser.add_argument("--work", default=None, metavar="DIR", help="keep generated cases and outputs here (default: a temporary folder, removed)")
    parser.set_defaults(func=run)
    return parser


def run(args) -> int:
    from ctbundles.batch_inference import parse_overrides
    from ctbundles.benchmark import run_bench, to_markdown
    from ctbundles.errors import CTInputError

    overrides: dict = {}
    for item in args.set:
        if ":" not in item.split("=", 1)[0]:
            raise CTInputError(f"--set expects BUNDLE:KEY=VALUE, got {item!r}")
        bundle, kv = item.split(":", 1)
        overrides.setdefault(bundle, {}).update(parse_overrides([kv]))
    slices = [int(s) for s in args.slices.split(",") if s.strip()] if args.slices else []
    if any(s < 1 for s in slices):
        raise CTInputError(f"--slices must be positive, got {args.slices}")
    shapes = {}
    for item in args.shape:
        name, _, dims = item.partition("=")
        try:
            shapes[name] = tuple(int(v) for v in dims.split(","))
        except ValueError:
            raise CTInputError(f"--shape expects BUNDLE=X,Y,Z, got {item!r}") from None
        if len(shapes[name]) != 3 or min(shapes[name]) < 1:
            raise CTInputError(f"--shape expects three positive sizes, got {item!r}")
    devices = None if args.device == "auto" else [args.device]
    try:
        report = run_bench(args.out, bundles=args.bundles.split(",") if args.bundles else None, threads=args.threads, repeats=args.repeats,
                           scaling_slices=slices, in_plane=args.in_plane, devices=devices, overrides=overrides, shapes=shapes,
                           random_weights=True if args.random_weights else None, naive=not args.no_naive, work=args.work)
    except ValueError as err:
        raise CTInputError(str(err)) from err
    print(to_markdown(report))
    errors = [k for e in report["bundles"].values() for k, r in e["results"].items() if "error" in r]
    return 1 if errors else 0

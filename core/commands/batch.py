"""`ctbundles batch`: a bundle's inference over a folder of scans, resumable and splittable.

Runs the bundle's configs/inference.json on every case of a folder (listed by the bundle's own
datalist expression) or of a datalist JSON, with the network built and the weights loaded once.
A failing case is recorded in failures.csv and the run goes on; --resume skips the cases already
finished; under `torchrun --nproc_per_node N` rank r takes cases r, r+N, ... and rank 0 merges the
results into cohort.csv at the end. Exit status 1 when a case failed (see failures.csv).
"""

from __future__ import annotations

from pathlib import Path


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "batch",
        help="bundle inference over a folder of scans: failures recorded, resumable, splittable with torchrun",
        description=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("bundle", metavar="BUNDLE", help="bundle folder (configs/, models/)")
    parser.add_argument("--input", metavar="DIR_OR_DATALIST", help="folder of scans or a datalist .json (not needed with --merge)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder: cases/, manifest/, cohort.csv, failures.csv")
    parser.add_argument("--resume", action="store_true", help="continue a run in DIR, skipping finished cases")
    parser.add_argument("--merge", action="store_true", help="only merge the manifest parts in DIR into cohort.csv and failures.csv")
    parser.add_argument("--config", action="append", default=None, metavar="FILE",
                        help="config file relative to BUNDLE (repeat for overlays; default configs/inference.json)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (VALUE parsed as JSON when it can be)")
    parser.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads per process")
    parser.set_defaults(func=run)
    return parser


def run(args) -> int:
    from ctbundles.batch_inference import merge_parts, parse_overrides, run_batch
    from ctbundles.errors import CTInputError

    if args.merge:
        cohort, failures = merge_parts(Path(args.out))
        print(f"merged: {cohort}, {failures}")
        return 0
    if not args.input:
        raise CTInputError("--input is required (unless --merge)")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    result = run_batch(args.bundle, args.input, args.out, resume=args.resume, overrides=parse_overrides(args.set),
                       config_files=args.config or ("configs/inference.json",))
    print(f"{len(result.done)} done, {len(result.skipped)} already finished, {len(result.failed)} failed of {result.assigned} cases")
    return 1 if result.failed else 0

"""`pretrain-export <run dir> <out dir>`: consolidated fp32 weights in Hugging Face format."""
from __future__ import annotations

import argparse

from launch.errors import one_line_errors

PROG = "pretrain-export"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    parser.add_argument("run_dir", help="runs/<name> made by pretrain-launch")
    parser.add_argument("out_dir", help="where to write model.safetensors, config.json and tokenizer files")
    parser.add_argument("--checkpoint", help="a step directory to export instead of the newest complete one")
    args = parser.parse_args(argv)
    with one_line_errors(PROG):
        from pretrain.train.export import export_run

        export_run(args.run_dir, args.out_dir, checkpoint=args.checkpoint)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The study's report from a sweep's records: tables, CSV, figures and a computed conclusion.

    python experiments/report.py --workdir=/tmp/study             # -> /tmp/study/report/
    python experiments/report.py --workdir=gs://BUCKET/study --out_dir=/tmp/report --json

Reads every ``results*.jsonl`` in ``--workdir`` (the shards of one grid merge), keeps the latest
record of each point, and writes ``report.md``, ``table.csv``, ``differences.csv``,
``report.json``, ``conclusion.md`` and the figures (PNG and SVG). Prints the table and the
conclusion (``--json``: the paths and the conclusion as one JSON object).
"""

from __future__ import annotations

from absl import flags

from espcn_jax.cli import print_json, run
from espcn_jax.study import outputs

flags.DEFINE_string("workdir", None, "The sweep's directory (holds results*.jsonl).")
flags.DEFINE_string("out_dir", None, "Where to write the report (default: WORKDIR/report).")
flags.DEFINE_bool("samples", True, "Draw the sample image grid (restores one model per family).")
flags.DEFINE_integer("bootstrap", 2000, "Bootstrap draws for the compute-equivalence intervals.")
flags.DEFINE_bool("json", False, "Print one JSON object instead of the table.")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    del argv
    if FLAGS.workdir is None:
        raise ValueError("--workdir is required")
    if FLAGS.bootstrap < 1:
        raise ValueError(f"bootstrap must be >= 1, got {FLAGS.bootstrap}")
    summary = outputs.write_report(
        FLAGS.workdir, FLAGS.out_dir, samples=FLAGS.samples, n_boot=FLAGS.bootstrap
    )
    table = summary.pop("table_md")
    if FLAGS.json:
        print_json(summary)
        return
    print(table)
    print()
    print(summary["conclusion"])
    print()
    print(f"report: {summary['out_dir']}")


if __name__ == "__main__":
    run(main)

"""The study's report from a sweep's records: tables, CSV, figures and a computed conclusion.

    python experiments/report.py --workdir=/tmp/study             # -> /tmp/study/report/
    python experiments/report.py --workdir=gs://BUCKET/study --out_dir=/tmp/report --json

Reads every ``results*.jsonl`` in ``--workdir`` (the shards of one grid merge), keeps the latest
record of each point, takes latency from ``WORKDIR/latency.json`` when an interleaved timing run
wrote one, and writes ``report.md``, ``table.csv``, ``differences.csv``, ``report.json``,
``conclusion.md`` and the figures (PNG and SVG). Prints the first set's table and the conclusion
(a list, one claim per line; ``--json``: the paths and the conclusion as one JSON object). The
statistical rules the report follows are listed in ``report.md`` (``espcn_jax/study/stats.py``).
"""

from __future__ import annotations

from absl import flags

from espcn_jax import cli, storage
from espcn_jax.study import outputs

flags.DEFINE_string("workdir", None, "The sweep's directory (holds results*.jsonl).")
flags.DEFINE_string("out_dir", None, "Where to write the report (default: WORKDIR/report).")
flags.DEFINE_bool("samples", True, "Draw the sample image grid (restores one model per family).")
JSON = cli.define_json_flag()
FLAGS = flags.FLAGS


def summary_table(summary: dict) -> str:
    table = summary["table_md"]
    return f"{table}\n\n{summary['conclusion']}\n\nreport: {summary['out_dir']}"


def main(argv: list[str]) -> None:
    cli.check_no_positional(argv)
    if FLAGS.workdir is None:
        raise ValueError("--workdir is required")
    # gs://: one line, not a traceback; the report goes to WORKDIR/report unless --out_dir
    storage.check_reachable(FLAGS.workdir, write=not FLAGS.out_dir)
    if FLAGS.out_dir:
        storage.check_reachable(FLAGS.out_dir)
    summary = outputs.write_report(FLAGS.workdir, FLAGS.out_dir, samples=FLAGS.samples)
    if JSON.value:
        summary.pop("table_md")
    cli.emit(summary, summary_table)


if __name__ == "__main__":
    cli.run(main)

"""`alignkd demo`: the embedded default job."""

from __future__ import annotations

import argparse

DEFAULT_OUTPUT = "alignkd-demo"
# The reduced run gets its own folder, so it never collides with the full run's settings.
QUICK_OUTPUT = "alignkd-demo-quick"
QUICK_STUDENT_STEPS = 20


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run Align-KD against two baselines on the embedded digits task (CPU, no downloads)",
        description=(
            "Build a visual question answering task from scikit-learn's handwritten digits, train a "
            "student with the sft, vanilla-kd and paper presets from the shipped teacher, evaluate each "
            "per question kind and write a report (table, bar chart, loss curves, attention maps)."
        ),
    )
    parser.add_argument(
        "--output",
        default=None,
        help=f"output folder (default: {DEFAULT_OUTPUT}, or {QUICK_OUTPUT} with --quick)",
    )
    parser.add_argument("--seeds", type=int, default=1, help="student seeds; the report gives mean and spread")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per student")
    parser.add_argument("--eval-questions", type=int, default=None, help="evaluate on the first N test questions only")
    parser.add_argument("--teacher", default=None, help="teacher folder (default: the one shipped with alignkd)")
    parser.add_argument(
        "--train-teacher", action="store_true", help="train the teacher here instead of using the shipped one"
    )
    parser.add_argument("--quick", action="store_true", help="a reduced run (small task, few steps) that checks the pipeline")
    parser.set_defaults(handler=run_demo_command)


def run_demo_command(args: argparse.Namespace) -> int:
    from alignkd.demo.run import DemoConfig, run_demo, summarize

    output = args.output or (QUICK_OUTPUT if args.quick else DEFAULT_OUTPUT)
    config = DemoConfig(output_dir=output, seeds=args.seeds, teacher=args.teacher, train_teacher=args.train_teacher)
    if args.quick:
        config.num_train, config.num_test, config.student_steps, config.teacher_steps = 1000, 100, QUICK_STUDENT_STEPS, 60
    if args.steps is not None:
        config.student_steps = args.steps
    if args.eval_questions is not None:
        config.eval_questions = args.eval_questions
    results = run_demo(config)
    print(summarize(results))
    if args.quick:
        print(
            f"--quick trains each student for {config.student_steps} steps, too few to learn the task: "
            "its student scores check the pipeline, not the method. Run `alignkd demo` for the real comparison."
        )
    print(f"Report: {output}/report (results.md, results.json, accuracy.png, loss_curves.png, attention.png)")
    return 0

"""Classroom tools: build student versions of the assignments, and grade submissions.

The assignments live in ``notebooks/assignments/`` as *instructor* notebooks: complete,
runnable solutions in nbgrader's format. A cell that students fill in is a solution cell
whose code sits between ``### BEGIN SOLUTION`` and ``### END SOLUTION``; a test cell is a
locked grade cell with a ``grade_id`` and ``points``, whose ``### BEGIN HIDDEN TESTS`` /
``### END HIDDEN TESTS`` region students never see. The same conventions as nbgrader
(https://nbgrader.readthedocs.io), without its course database or server:

    python -m sparse_attn_edu.classroom build --out student/
        nbgrader's ClearSolutions, ClearHiddenTests, ClearOutput and LockCells
        preprocessors, run through nbconvert: solutions become
        ``raise NotImplementedError()``, hidden tests disappear, outputs are cleared.

    python -m sparse_attn_edu.classroom grade submission.ipynb --json grade.json
        Put the instructor's version of every locked cell back (this restores the hidden
        tests and undoes any edit to a test), run the notebook with nbclient, and give each
        grade cell its points when it raised no error. Prints a table; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbconvert.exporters import NotebookExporter
from nbgrader.preprocessors import ClearHiddenTests, ClearOutput, ClearSolutions, LockCells

ASSIGNMENTS = Path(__file__).resolve().parent.parent / "notebooks" / "assignments"
CELL_TIMEOUT_S = 300  # per cell; the assignments' cells take seconds on a laptop


def _nbgrader(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


def assignment_name(nb: nbformat.NotebookNode, path: Path) -> str:
    """The assignment a notebook belongs to: its metadata tag, else its file name."""
    return nb.metadata.get("sparse_attn_edu", {}).get("assignment", path.stem)


# ---- build ---------------------------------------------------------------------------


def student_version(source: Path) -> nbformat.NotebookNode:
    """The student notebook of an instructor notebook: no solutions, hidden tests, outputs."""
    exporter = NotebookExporter()
    # ClearOutput also drops the execution timestamps nbconvert --execute records.
    clear_output = ClearOutput(remove_metadata_fields={"collapsed", "scrolled", "execution"})
    for preprocessor in (ClearSolutions(), ClearHiddenTests(), clear_output, LockCells()):
        exporter.register_preprocessor(preprocessor, enabled=True)
    body, _ = exporter.from_filename(str(source))
    return nbformat.reads(body, as_version=4)


def build(out_dir: Path, source_dir: Path = ASSIGNMENTS) -> list[Path]:
    """Write the student version of every notebook in `source_dir` to `out_dir`."""
    sources = sorted(Path(source_dir).glob("*.ipynb"))
    if not sources:
        raise FileNotFoundError(f"expected assignment notebooks in {source_dir}, found none")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for source in sources:
        target = out_dir / source.name
        nbformat.write(student_version(source), target)
        written.append(target)
    return written


# ---- grade ---------------------------------------------------------------------------


@dataclass
class CellGrade:
    grade_id: str
    points: float
    max_points: float
    status: str  # "passed", "failed" (the cell raised) or "missing" (deleted by the student)
    error: str = ""


@dataclass
class GradeReport:
    assignment: str
    submission: str
    cells: list[CellGrade] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(cell.points for cell in self.cells)

    @property
    def max_total(self) -> float:
        return sum(cell.max_points for cell in self.cells)

    def to_dict(self) -> dict:
        return {
            "assignment": self.assignment,
            "submission": self.submission,
            "exercises": [asdict(cell) for cell in self.cells],
            "total": self.total,
            "max_total": self.max_total,
        }

    def table(self) -> str:
        width = max([len("total")] + [len(cell.grade_id) for cell in self.cells])
        lines = [f"{self.assignment}  ({self.submission})", f"{'exercise':<{width}}  points"]
        for cell in self.cells:
            note = f"  {cell.status}: {cell.error}" if cell.status != "passed" else ""
            lines.append(f"{cell.grade_id:<{width}}  {cell.points:g} / {cell.max_points:g}{note}")
        lines.append(f"{'total':<{width}}  {self.total:g} / {self.max_total:g}")
        return "\n".join(lines)


def _error_text(cell) -> str:
    """'Name: message' of the first error a cell raised, or '' if it raised none."""
    for output in cell.get("outputs", []):
        if output.output_type == "error":
            message = output.evalue.strip().splitlines()
            return f"{output.ename}: {message[0][:200] if message else ''}".rstrip(": ")
    return ""


def restore_locked_cells(
    submission: nbformat.NotebookNode, source: nbformat.NotebookNode
) -> list[str]:
    """Overwrite every locked cell of `submission` with the instructor's, matched by grade_id.

    This puts the hidden tests back and undoes edits to tests or given code (what nbgrader's
    OverwriteCells does from its database). Returns the grade_ids of grade cells missing
    from the submission.
    """
    originals = {_nbgrader(c)["grade_id"]: c for c in source.cells if _nbgrader(c).get("locked")}
    present = set()
    for cell in submission.cells:
        original = originals.get(_nbgrader(cell).get("grade_id"))
        if original is not None:
            cell.source = original.source
            cell.metadata["nbgrader"] = original.metadata["nbgrader"]
            present.add(_nbgrader(cell)["grade_id"])
    return [
        _nbgrader(c)["grade_id"]
        for c in source.cells
        if _nbgrader(c).get("grade") and _nbgrader(c)["grade_id"] not in present
    ]


def grade(
    submission_path: Path,
    source_dir: Path = ASSIGNMENTS,
    timeout: int = CELL_TIMEOUT_S,
) -> tuple[GradeReport, nbformat.NotebookNode]:
    """Run a submitted notebook with all tests, hidden ones included; score its grade cells.

    Returns the report and the executed notebook (to show a student their errors).
    """
    submission_path = Path(submission_path)
    nb = nbformat.read(submission_path, as_version=4)
    name = assignment_name(nb, submission_path)
    source_path = Path(source_dir) / f"{name}.ipynb"
    if not source_path.exists():
        raise FileNotFoundError(
            f"expected the instructor notebook {source_path} for assignment {name!r}; "
            "pass --source-dir"
        )
    source = nbformat.read(source_path, as_version=4)
    missing = restore_locked_cells(nb, source)

    for cell in nb.cells:  # outputs the student left would be mistaken for results
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        allow_errors=True,  # a failing exercise must not stop the ones after it
        resources={"metadata": {"path": str(submission_path.parent.resolve())}},
    )
    client.execute()

    report = GradeReport(name, str(submission_path))
    for cell in nb.cells:
        meta = _nbgrader(cell)
        if not meta.get("grade"):
            continue
        error, points = _error_text(cell), float(meta["points"])
        if error:
            report.cells.append(CellGrade(meta["grade_id"], 0.0, points, "failed", error))
        else:
            report.cells.append(CellGrade(meta["grade_id"], points, points, "passed"))
    for cell in source.cells:
        meta = _nbgrader(cell)
        if meta.get("grade_id") in missing:
            report.cells.append(CellGrade(meta["grade_id"], 0.0, float(meta["points"]), "missing"))
    return report, nb


# ---- command line ----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sparse_attn_edu.classroom",
        description="Build student versions of the assignments, or grade a submission.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="write the student notebooks")
    build_cmd.add_argument("--out", type=Path, required=True, help="folder for student notebooks")
    build_cmd.add_argument("--source-dir", type=Path, default=ASSIGNMENTS)
    grade_cmd = commands.add_parser("grade", help="execute and score one submitted notebook")
    grade_cmd.add_argument("submission", type=Path)
    grade_cmd.add_argument("--json", type=Path, help="also write the scores as JSON here")
    grade_cmd.add_argument("--source-dir", type=Path, default=ASSIGNMENTS)
    grade_cmd.add_argument("--timeout", type=int, default=CELL_TIMEOUT_S, help="seconds per cell")
    grade_cmd.add_argument("--executed", type=Path, help="also save the executed notebook here")
    args = parser.parse_args(argv)

    if args.command == "build":
        for path in build(args.out, args.source_dir):
            print(path)
        return 0
    report, executed = grade(args.submission, args.source_dir, args.timeout)
    print(report.table())
    if args.json:
        args.json.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    if args.executed:
        nbformat.write(executed, args.executed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
